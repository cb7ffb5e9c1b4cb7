"""The demo page's fixed texts and look: its Markdown blocks, the weights line, CSS and the
script run on load. `app.py` lays the page out and wires it; what the page says lives here."""
from __future__ import annotations

from ..pipeline import DEFAULT_MAX_PIXELS, Pipeline

PAPER_URL = "https://arxiv.org/abs/2601.00322"
CODE_URL = "https://github.com/fashyon/DMDNet"

HEADER = f"""
# DMDNet · see through the glass
Split a photo taken through a window into the **scene behind the glass** (transmission, T)
and the **reflection** (R). DMDNet (AAAI 2026) lets estimated depth steer the network: its
Mamba blocks read the pixels in a depth-aware order (DAScan), depth enters the state-space
terms (DS-SSM), and memory experts (MECM) restore what the reflection covered.
[Paper (arXiv:2601.00322)]({PAPER_URL}) · [Authors' code]({CODE_URL}) · this demo runs an
independent, exact PyTorch re-implementation.
"""

SCAN_HELP = """
A selective scan reads a feature map as a sequence, so the order decides what each pixel
has "seen". DAScan sorts pixels by a learned proximity map: the **T** stream scans region by
region (outlined in white), near-to-far inside each; the **R** stream scans all pixels
near-to-far. Colour = position in the sequence. DMDNet-Lite has no DSMamba at full
resolution, so its scans start at level 2.
"""

EXPERT_HELP = """
Each DM stack ends with a memory-expert block (MECM): a gate picks 2 of 4 experts, and each
reads its memory bank to fill in content. Rows are MECM calls: level, branch (the main
decoder, or the depth-semantic branch for stream T or R) and the stream it compensates.
"""

CITATION = """
```bibtex
@inproceedings{dmdnet2026,
  title     = {Depth-Synergized Mamba Meets Memory Experts for All-Day Image Reflection Separation},
  booktitle = {Proceedings of the AAAI Conference on Artificial Intelligence},
  year      = {2026},
  eprint    = {2601.00322},
  archivePrefix = {arXiv}
}
```
Example photos: WindowSeat project examples (SIR² and other sources; licence per source) and
CEILNet Real45 (Fan et al., ICCV 2017; research use only). `examples/README.md` names each
file's source.
"""

API_HELP = """
`/separate` takes one image and returns, in order: the **transmission** PNG and the
**reflection** PNG at the input's full resolution, the colour-mapped **depth** map, the
**scan order** of every level (T and R streams), the **MECM gate** heatmap, and a JSON
**summary** (input and processed sizes, seconds, weights, device, `frames`: of an animated
GIF the first frame is separated, the gate coefficients of every MECM call,
`transmission_gain` where the weights have a global gain, and the server-side `run` id).

```python
from gradio_client import Client, handle_file

client = Client("http://127.0.0.1:7860/")          # or the Space name, e.g. "user/dmdnet"
transmission, reflection, depth, scan_order, gates, summary = client.predict(
    handle_file("photo.jpg"), api_name="/separate")
print(transmission, summary["seconds"])
```
Invalid files, and paths on the server in place of an upload, are refused with a message
(`gradio_client.exceptions.AppError`). When too many requests wait, the answer is
`gradio_client.utils.QueueError` ("Queue is full"): wait a few seconds and retry.
"""

TOAST_TITLE_JS = """() => {
  // Gradio titles every error toast "Error" (its gr.Error title never reaches the page): name the app instead.
  const retitle = () => document.querySelectorAll(".toast-title.error").forEach((title) => {
    const text = title.firstChild;
    if (text && text.nodeType === Node.TEXT_NODE && text.textContent.trim() === "Error") text.textContent = "DMDNet ";
  });
  new MutationObserver(retitle).observe(document.body, {childList: true, subtree: true});
}"""

CSS = """
.gradio-container { max-width: 1400px !important; margin: auto; }
#header h1 { margin-bottom: 0.2em; }
#weights { opacity: 0.8; font-size: 0.9em; }
.figure .image-container { padding-top: 36px; box-sizing: border-box; }  /* below the label and buttons */
"""


def weights_line(pipe: Pipeline) -> str:
    """The line under the header: the loaded weights, device and dtype, and the scale photos run at."""
    scale = "" if pipe.max_pixels >= DEFAULT_MAX_PIXELS else (
        f" · photos above {pipe.max_pixels / 1e6:.1f} MP run downscaled")
    if pipe.max_short_side:
        scale += (f" · photos run at a short side of at most {pipe.max_short_side} px, the scale "
                  "chosen for the weights; the layers come back at full size")
    return (f"**Weights:** {pipe.weights.label} · **device:** {pipe.device} "
            f"({str(pipe.dtype).removeprefix('torch.')}){scale}")
