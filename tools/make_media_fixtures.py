"""Writes tiny PNGs the way AUTOMATIC1111 and ComfyUI do (with PIL's PngInfo.add_text), for the
engine's restore tests: tests/fixtures/media/a1111.png and comfyui.png.

Run from the repository root: /work/venv/bin/python tools/make_media_fixtures.py
The settings text comes from the .txt/.json files beside the outputs.
"""

from pathlib import Path

from PIL import Image
from PIL.PngImagePlugin import PngInfo

HERE = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "media"


def tiny():
    img = Image.new("RGB", (8, 8))
    img.putdata([((x * 32) % 256, (y * 32) % 256, 128) for y in range(8) for x in range(8)])
    return img


def main():
    # A1111 (modules/images.py save_image_with_geninfo): pnginfo.add_text("parameters", geninfo)
    info = PngInfo()
    info.add_text("parameters", (HERE / "a1111_parameters.txt").read_text().strip())
    tiny().save(HERE / "a1111.png", pnginfo=info)

    # ComfyUI (nodes.py SaveImage): add_text("prompt", json.dumps(prompt)), then each extra_pnginfo
    # key, i.e. "workflow".
    info = PngInfo()
    info.add_text("prompt", (HERE / "comfyui_prompt.json").read_text().strip())
    info.add_text("workflow", (HERE / "comfyui_workflow.json").read_text().strip())
    tiny().save(HERE / "comfyui.png", pnginfo=info, compress_level=4)


if __name__ == "__main__":
    main()
