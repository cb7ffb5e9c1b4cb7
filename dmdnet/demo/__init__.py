"""What the demo page shows: the views' data, their matplotlib figures, run folders and the
disk bound. Reached only by `app.py` and the CLI."""
