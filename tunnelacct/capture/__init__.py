"""Packet capture: sources (capture files, live interfaces, replays), the decoder, and the child
process that reads and decodes off the event loop."""
