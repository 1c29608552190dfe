"""Reading sessions: the filter language, network terms per engine, and the CSV export."""
