"""Packet capture: the sources (capture files, live interfaces, paced replays) yielding RawBatch
objects, the vectorised decoder, the child processes that read and decode off the event loop,
and `inspect`."""
