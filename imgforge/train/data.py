"""Training data: image folders as map-style datasets indexed by `(index, sample)` (see plan.py), decoded
with imgforge.imageio (every format it reads), preprocessed as the official data/base_dataset.py does.

- `paired_dataset`: pix2pix. The official aligned layout (DATAROOT/train/*.jpg, each image A|B side by side;
  DATAROOT itself when it holds the images) or two folders DATAROOT/A and DATAROOT/B paired by file name.
- `unpaired_dataset`: CycleGAN. DATAROOT/trainA and DATAROOT/trainB; A in the plan's order, B drawn at random.
- `SquareImages`: DDPM. Every image under a folder, resized (shorter side) and centre-cropped to one square
  resolution, decoded once and held as one uint8 array (the method draws flips and noise per sample).

Preprocessing (`Preprocess`): resize to load_size x load_size (PIL bicubic, aspect ratio ignored), a random
crop_size crop, a random horizontal flip, then [-1, 1]; both images of a pair get the same crop and flip.
Images that fail to decode are skipped when the dataset is built, and reported in one line.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..batch import IMAGE_EXTENSIONS
from ..errors import ImgforgeError
from ..imageio import read_image
from ..progress import console, printable
from .plan import preview_rng, sample_rng

PREPROCESS_MODES = ("resize_and_crop", "crop", "scale_width", "scale_width_and_crop", "none")
DIRECTIONS = ("AtoB", "BtoA")


@dataclass(frozen=True)
class Preprocess:
    """The official --preprocess, --load_size, --crop_size and --no_flip."""

    load_size: int = 286
    crop_size: int = 256
    mode: str = "resize_and_crop"
    flip: bool = True

    def __post_init__(self):
        if self.mode not in PREPROCESS_MODES:
            raise ImgforgeError(f"unknown --preprocess {self.mode!r}: use one of {', '.join(PREPROCESS_MODES)}")
        if self.load_size < 1 or self.crop_size < 1:
            raise ImgforgeError("--load-size and --crop-size must be positive")
        if "resize" in self.mode and "crop" in self.mode and self.crop_size > self.load_size:
            raise ImgforgeError(f"--crop-size {self.crop_size} is larger than --load-size {self.load_size}")

    @classmethod
    def of(cls, options) -> "Preprocess":
        return cls(options.load_size, options.crop_size, options.preprocess, options.flip)

    @classmethod
    def test_time(cls, options) -> "Preprocess":
        """The official test options (validation): loaded at the crop size, never flipped."""
        return cls(options.crop_size, options.crop_size, options.preprocess, False)

    def draw(self, width: int, height: int, rng: np.random.Generator) -> tuple[int, int, bool]:
        """The official get_params: the crop's corner (in the resized image) and the flip."""
        new_w, new_h = width, height
        if self.mode == "resize_and_crop":
            new_w = new_h = self.load_size
        elif self.mode == "scale_width_and_crop":
            new_w, new_h = self.load_size, self.load_size * height // width
        x = int(rng.integers(0, max(0, new_w - self.crop_size) + 1))
        y = int(rng.integers(0, max(0, new_h - self.crop_size) + 1))
        return x, y, bool(rng.random() > 0.5)

    def apply(self, image: Image.Image, params: tuple[int, int, bool]) -> torch.Tensor:
        """The official get_transform with those params: C x H x W float32 in [-1, 1]."""
        x, y, flip = params
        if "resize" in self.mode:
            image = image.resize((self.load_size, self.load_size), Image.BICUBIC)
        elif "scale_width" in self.mode:
            image = _scale_width(image, self.load_size, self.crop_size)
        if "crop" in self.mode:
            if image.width > self.crop_size or image.height > self.crop_size:
                image = image.crop((x, y, x + self.crop_size, y + self.crop_size))
        elif self.mode == "none":
            image = _multiple_of_4(image)
        if self.flip and flip:
            image = image.transpose(Image.FLIP_LEFT_RIGHT)
        array = np.asarray(image, dtype=np.float32) / 255.0
        return torch.from_numpy(array.transpose(2, 0, 1).copy()) * 2 - 1


def _scale_width(image: Image.Image, width: int, crop_size: int) -> Image.Image:
    if image.width == width and image.height >= crop_size:
        return image
    height = int(max(width * image.height / image.width, crop_size))
    return image.resize((width, height), Image.BICUBIC)


def _multiple_of_4(image: Image.Image) -> Image.Image:
    width, height = (int(round(side / 4) * 4) for side in image.size)
    return image if (width, height) == image.size else image.resize((width, height), Image.BICUBIC)


def image_files(folder: Path) -> list[Path]:
    """Every image file under `folder` (recursively, as the official make_dataset), sorted."""
    return sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


def readable(files: list[Path], what: str) -> list[Path]:
    """`files` without those that fail to decode; those are reported in one line."""
    results = decode_all(files, read_image)
    report_skipped(files, results, what)
    return [path for path, result in zip(files, results) if not isinstance(result, str)]


def decode_all(files: list[Path], decode) -> list:
    """decode(path) for every file, on a few threads; the one-line error message where it fails."""
    def attempt(path: Path):
        try:
            return decode(path)
        except ImgforgeError as exc:
            return str(exc)

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        return list(pool.map(attempt, files))


def report_skipped(files: list[Path], results: list, what: str) -> None:
    bad = [(path, reason) for path, reason in zip(files, results) if isinstance(reason, str)]
    if bad:
        path, reason = bad[0]
        console.print(f"skipped {len(bad)} {what} image(s) that cannot be read, e.g. {printable(path)}: "
                      f"{printable(reason)}", markup=False, highlight=False, soft_wrap=True)


def load_rgb(path: Path) -> Image.Image:
    return read_image(path).to_pil("RGB")


class PairedImages(torch.utils.data.Dataset):
    """pix2pix pairs: `pairs` holds (A file, B file), or (aligned file, None) for an A|B image."""

    def __init__(self, pairs: list[tuple[Path, Path | None]], preprocess: Preprocess, direction: str, seed: int = 0):
        if direction not in DIRECTIONS:
            raise ImgforgeError(f"unknown --direction {direction!r}: use AtoB or BtoA")
        self.pairs, self.preprocess, self.direction, self.seed = pairs, preprocess, direction, seed

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, torch.Tensor]:
        index, sample = key
        return self._item(index, sample_rng(self.seed, sample))

    def preview_item(self, index: int) -> dict[str, torch.Tensor]:
        return self._item(index, preview_rng(self.seed))

    def _item(self, index: int, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        first, second = self.pairs[index]
        if second is None:
            image = load_rgb(first)
            half = image.width // 2
            a, b = image.crop((0, 0, half, image.height)), image.crop((half, 0, 2 * half, image.height))
        else:
            a, b = load_rgb(first), load_rgb(second)
        params = self.preprocess.draw(a.width, a.height, rng)
        a, b = self.preprocess.apply(a, params), self.preprocess.apply(b, params)
        if self.direction == "BtoA":
            a, b = b, a
        return {"A": a, "B": b}


class UnpairedImages(torch.utils.data.Dataset):
    """CycleGAN data: A images in the plan's order (A_size = the longer side's count, wrapping), a random B
    image for each; each side has its own crop and flip."""

    def __init__(self, files_A: list[Path], files_B: list[Path], preprocess: Preprocess, seed: int = 0):
        self.files_A, self.files_B, self.preprocess, self.seed = files_A, files_B, preprocess, seed

    def __len__(self) -> int:
        return max(len(self.files_A), len(self.files_B))

    def __getitem__(self, key: tuple[int, int]) -> dict[str, torch.Tensor]:
        index, sample = key
        rng = sample_rng(self.seed, sample)
        partner = int(rng.integers(0, len(self.files_B)))
        return {"A": self._load(self.files_A[index % len(self.files_A)], rng),
                "B": self._load(self.files_B[partner], rng)}

    def preview_item(self, index: int) -> dict[str, torch.Tensor]:
        rng = preview_rng(self.seed)
        return {"A": self._load(self.files_A[index % len(self.files_A)], rng),
                "B": self._load(self.files_B[index % len(self.files_B)], rng)}

    def _load(self, path: Path, rng: np.random.Generator) -> torch.Tensor:
        image = load_rgb(path)
        return self.preprocess.apply(image, self.preprocess.draw(image.width, image.height, rng))


def paired_dataset(dataroot: str | os.PathLike, preprocess: Preprocess, direction: str, seed: int = 0) -> PairedImages:
    """pix2pix data from DATAROOT/A + DATAROOT/B (paired by name), DATAROOT/train (aligned) or DATAROOT."""
    root = Path(dataroot)
    if not root.is_dir():
        raise ImgforgeError(f"dataset folder not found: {root}")
    if (root / "A").is_dir() and (root / "B").is_dir():
        pairs = _pairs_by_name(root / "A", root / "B")
    else:
        folder = root / "train" if (root / "train").is_dir() else root
        pairs = [(path, None) for path in readable(image_files(folder), "training")]
        if not pairs:
            raise ImgforgeError(f"no training images in {folder} (the aligned layout: images holding A and B side by "
                                "side; or two folders A/ and B/ paired by file name)")
    return PairedImages(pairs, preprocess, direction, seed)


def _pairs_by_name(folder_A: Path, folder_B: Path) -> list[tuple[Path, Path]]:
    files_A = {p.relative_to(folder_A).with_suffix(""): p for p in image_files(folder_A)}
    files_B = {p.relative_to(folder_B).with_suffix(""): p for p in image_files(folder_B)}
    if not files_A or not files_B:
        empty = folder_A if not files_A else folder_B
        raise ImgforgeError(f"no images in {empty}")
    alone = sorted(set(files_A) ^ set(files_B))
    if alone:
        side = "A" if alone[0] in files_A else "B"
        raise ImgforgeError(f"{len(alone)} image(s) have no partner of the same name, e.g. {side}/{printable(alone[0])}"
                            " (pairs are matched by file name without extension)")
    names = sorted(files_A)
    good = set(readable([files_A[n] for n in names], "A")) | set(readable([files_B[n] for n in names], "B"))
    pairs = [(files_A[n], files_B[n]) for n in names if files_A[n] in good and files_B[n] in good]
    if not pairs:
        raise ImgforgeError(f"no readable pairs in {folder_A} and {folder_B}")
    return pairs


def unpaired_dataset(dataroot: str | os.PathLike, preprocess: Preprocess, seed: int = 0) -> UnpairedImages:
    root = Path(dataroot)
    folders = [root / "trainA", root / "trainB"]
    missing = [str(f) for f in folders if not f.is_dir()]
    if missing:
        raise ImgforgeError(f"CycleGAN data needs the folders trainA/ and trainB/: {', '.join(missing)} not found")
    files = [readable(image_files(folder), folder.name) for folder in folders]
    for folder, found in zip(folders, files):
        if not found:
            raise ImgforgeError(f"no readable images in {folder}")
    return UnpairedImages(files[0], files[1], preprocess, seed)


def square(path: Path, resolution: int, channels: int) -> np.ndarray:
    """`path` resized so that its shorter side is `resolution` (PIL bicubic), centre-cropped to a square:
    uint8 resolution x resolution x channels (3: RGB, 1: grey; alpha dropped, 16 bits rounded to 8)."""
    image = read_image(path).to_pil("RGB" if channels == 3 else "L")
    scale = resolution / min(image.size)
    width, height = max(resolution, round(image.width * scale)), max(resolution, round(image.height * scale))
    if (width, height) != image.size:
        image = image.resize((width, height), Image.BICUBIC)
    left, top = (width - resolution) // 2, (height - resolution) // 2
    image = image.crop((left, top, left + resolution, top + resolution))
    return np.asarray(image, dtype=np.uint8).reshape(resolution, resolution, channels)


class SquareImages:
    """Every image under `folder` (recursively) at `resolution` x `resolution`, decoded once: `pixels[i]` is
    image i (uint8 H x W x C). Images that fail to decode are left out and reported in one line."""

    def __init__(self, folder: str | os.PathLike, resolution: int, channels: int = 3):
        folder = Path(folder).expanduser()
        if not folder.is_dir():
            raise ImgforgeError(f"image folder not found: {printable(folder)}")
        if resolution < 1:
            raise ImgforgeError(f"--resolution must be at least 1, not {resolution}")
        if channels not in (1, 3):
            raise ImgforgeError(f"training images have 1 or 3 channels, not {channels}")
        files = image_files(folder)
        if not files:
            raise ImgforgeError(f"no images under {printable(folder)} ({', '.join(sorted(IMAGE_EXTENSIONS))})")
        results = decode_all(files, lambda path: square(path, resolution, channels))
        report_skipped(files, results, "training")
        self.paths = [path for path, result in zip(files, results) if not isinstance(result, str)]
        if not self.paths:
            raise ImgforgeError(f"none of the {len(files)} images under {printable(folder)} can be read")
        self.pixels = np.stack([result for result in results if not isinstance(result, str)])

    def __len__(self) -> int:
        return len(self.paths)


def validation_root(root: str | os.PathLike, name: str) -> Path:
    """ROOT/<name> (e.g. val/) when there is one, else ROOT itself."""
    root = Path(root)
    return root / name if (root / name).is_dir() else root


def unpaired_validation(root: str | os.PathLike, preprocess: Preprocess) -> tuple[torch.Tensor, torch.Tensor]:
    """CycleGAN validation images, ROOT/valA + valB or ROOT/testA + testB, as two stacks in [-1, 1]."""
    root = Path(root)
    for first, second in (("valA", "valB"), ("testA", "testB")):
        if (root / first).is_dir() and (root / second).is_dir():
            stacks = []
            for folder in (root / first, root / second):
                files = readable(image_files(folder), folder.name)
                if len(files) < 2:
                    raise ImgforgeError(f"--val needs at least 2 readable images in {folder}")
                stacks.append(torch.stack([_test_image(path, preprocess) for path in files]))
            return stacks[0], stacks[1]
    raise ImgforgeError(f"--val {root}: CycleGAN validation needs the folders valA/ and valB/ (or testA/ and testB/)")


def _test_image(path: Path, preprocess: Preprocess) -> torch.Tensor:
    image = load_rgb(path)
    return preprocess.apply(image, preprocess.draw(image.width, image.height, preview_rng(0)))
