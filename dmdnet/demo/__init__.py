"""The demo page behind `app.py`: what its events call (`callbacks`), what it takes as an image
(`uploads`), what it says (`texts`), the views' data and their matplotlib figures, run folders
and the disk bound. Reached only by `app.py` and the CLI."""
