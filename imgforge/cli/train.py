"""`imgforge train pix2pix|cyclegan|...`: train or fine-tune a model on your own images, see docs/train.md.
The options every method shares (run folder, seed, batch, saving, device, precision, engine) are declared
once here; each subcommand adds its method's own and calls imgforge.train.api."""

from __future__ import annotations

import json as json_module
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..progress import console, printable
from . import options
from .app import app

train_app = typer.Typer(
    help="Train or fine-tune a model on your own images (one trainer; runs under torchrun or on Ray Train).",
    no_args_is_help=True, rich_markup_mode=None, context_settings={"max_content_width": 120},
)
app.add_typer(train_app, name="train")

# --- shared by every method ---------------------------------------------------------------------------------
DataRoot = Annotated[Path, typer.Argument(metavar="DATAROOT", help="The dataset folder.", show_default=False)]
RunDir = Annotated[Path, typer.Option("-o", "--output", metavar="RUN_DIR", show_default=False,
                                      help="The run folder: weights, options.json, log.jsonl, samples/, train_state/.")]
Seed = Annotated[int, typer.Option("--seed", metavar="N", help="Seeds the weights, the data order and every draw.")]
BatchSize = Annotated[int, typer.Option("--batch-size", metavar="N", min=1,
                                        help="The global batch, split among the processes.")]
Resume = Annotated[bool, typer.Option("--resume", help="Continue the run in RUN_DIR from its last save (give the "
                                      "options it was started with).")]
SaveEvery = Annotated[int, typer.Option("--save-every", metavar="N", min=1,
                                        help="Steps between saves of the latest weights and the resumable state.")]
LogEvery = Annotated[int, typer.Option("--log-every", metavar="N", min=1,
                                       help="Steps between loss records (log.jsonl, --json, TensorBoard).")]
LoaderWorkers = Annotated[Optional[int], typer.Option(
    "--loader-workers", metavar="N", min=0, show_default=False,
    help="Data-loading processes (default: up to 4, by the CPU count; 0 loads in the training process).")]
Json = Annotated[bool, typer.Option("--json", help="Print one JSON object per logged step on stdout, no bar.")]
Precision = Annotated[str, typer.Option("--precision", metavar="NAME",
                                        help="fp32 (default), or bf16 / fp16 autocast (fp16: GPU only).")]
Engine = Annotated[str, typer.Option("--engine", metavar="local|ray",
                                     help="local (this process; several under torchrun) or ray (Ray Train).")]
Workers = Annotated[int, typer.Option("--workers", metavar="N", min=1, help="Ray Train workers (--engine ray).")]


# the trainer's settings (TrainSettings) every method takes; the batch size is each method's own (its default
# differs), as are the GAN options below whose official defaults differ between pix2pix and CycleGAN
TRAIN_OPTIONS = options.parameters(
    seed=(Seed, 0), resume=(Resume, False), save_every=(SaveEvery, 5000), log_every=(LogEvery, 100),
    loader_workers=(LoaderWorkers, None), json=(Json, False), quiet=(options.Quiet, False),
    device=(options.Device, "auto"), precision=(Precision, "fp32"), engine=(Engine, "local"), workers=(Workers, 1),
    gpus_per_worker=(options.GpusPerWorker, 0.0), ray_address=(options.RayAddress, None),
    threads=(options.Threads, None),
)


def report(result, *, json: bool, quiet: bool, **_) -> None:
    """The end of a run: one line on stderr, the summary object on stdout with --json (rank 0 only)."""
    if not result.main_process:
        return
    if json:
        print(json_module.dumps({"summary": {"run_dir": str(result.run_dir), "step": result.step,
                                             "epoch": result.epoch, "losses": result.losses}}), flush=True)
    if not quiet:
        losses = "  ".join(f"{k} {v:.4g}" for k, v in result.losses.items())
        console.print(f"trained {result.step} steps into {printable(result.run_dir)}  {losses}", markup=False,
                      highlight=False, soft_wrap=True)


# --- GAN options ----------------------------------------------------------------------------------------------
NetG = Annotated[str, typer.Option("--netG", metavar="NAME",
                                   help="unet_256, unet_128, resnet_9blocks or resnet_6blocks.")]
Ngf = Annotated[int, typer.Option("--ngf", metavar="N", min=1, help="Generator filters in the first layer.")]
Ndf = Annotated[int, typer.Option("--ndf", metavar="N", min=1, help="Discriminator filters in the first layer.")]
NLayersD = Annotated[int, typer.Option("--n-layers-d", metavar="N", min=1,
                                       help="PatchGAN layers (3: the 70x70 PatchGAN).")]
Norm = Annotated[str, typer.Option("--norm", metavar="NAME", help="batch, instance or none.")]
GanMode = Annotated[str, typer.Option("--gan-mode", metavar="NAME",
                                      help="vanilla (cross-entropy) or lsgan (least squares).")]
LoadSize = Annotated[int, typer.Option("--load-size", metavar="N", min=1, help="Images are resized to N x N ...")]
CropSize = Annotated[int, typer.Option("--crop-size", metavar="N", min=1, help="... then cropped to N x N at random.")]
Preprocess = Annotated[str, typer.Option("--preprocess", metavar="NAME",
                                         help="resize_and_crop, crop, scale_width, scale_width_and_crop or none.")]
NoFlip = Annotated[bool, typer.Option("--no-flip", help="No random horizontal flips.")]
Direction = Annotated[str, typer.Option("--direction", metavar="AtoB|BtoA", help="Which side is the input.")]
Epochs = Annotated[int, typer.Option("--epochs", metavar="N", min=0, help="Epochs at the initial learning rate.")]
EpochsDecay = Annotated[int, typer.Option("--epochs-decay", metavar="N", min=0,
                                          help="Then epochs with the rate decaying linearly to 0.")]
Lr = Annotated[float, typer.Option("--lr", metavar="X", min=0.0, help="Adam's initial learning rate.")]
Beta1 = Annotated[float, typer.Option("--beta1", metavar="X", min=0.0, max=1.0, help="Adam's beta1.")]
StartFrom = Annotated[Optional[str], typer.Option(
    "--from", metavar="CHECKPOINT|MODEL", show_default=False,
    help="Fine-tune: start from a generator file, a run folder (every latest_net_*.pth) or a zoo model.")]
Val = Annotated[Optional[Path], typer.Option(
    "--val", metavar="VALROOT", show_default=False,
    help="Validation images, evaluated at each epoch end into log.jsonl (pix2pix: PSNR/SSIM/L1 against the targets; "
    "CycleGAN: FID of the translations; docs/eval.md).")]
SaveEpochEvery = Annotated[int, typer.Option("--save-epoch-every", metavar="N", min=1,
                                             help="Epochs between {epoch}_net_*.pth snapshots.")]
GAN_OPTIONS = options.parameters(
    ngf=(Ngf, 64), ndf=(Ndf, 64), n_layers_d=(NLayersD, 3), load_size=(LoadSize, 286), crop_size=(CropSize, 256),
    preprocess=(Preprocess, "resize_and_crop"), no_flip=(NoFlip, False), direction=(Direction, "AtoB"),
    epochs=(Epochs, 100), epochs_decay=(EpochsDecay, 100), lr=(Lr, 0.0002), beta1=(Beta1, 0.5),
    start_from=(StartFrom, None), save_epoch_every=(SaveEpochEvery, 5), val=(Val, None),
)


def gan_fields(given: dict) -> dict:
    """The train API's keyword arguments of the shared options (GAN and trainer) as given on the command line."""
    given = dict(given)
    flip = not given.pop("no_flip")
    val = given.pop("val")
    return {**given, "flip": flip, "val": None if val is None else str(val)}


@train_app.command("pix2pix")
@options.taking(*GAN_OPTIONS, *TRAIN_OPTIONS)
def pix2pix(
    dataroot: DataRoot,
    output: RunDir,
    netG: NetG = "unet_256",
    norm: Norm = "batch",
    no_dropout: Annotated[bool, typer.Option("--no-dropout", help="No dropout in the generator.")] = False,
    gan_mode: GanMode = "vanilla",
    lambda_l1: Annotated[float, typer.Option("--lambda-l1", metavar="X", min=0.0, help="Weight of the L1 loss.")] = 100.0,
    batch_size: BatchSize = 1,
    **shared,
) -> None:
    """pix2pix on DATAROOT/train (A|B side by side), or DATAROOT/A + DATAROOT/B paired by file name."""
    from ..train.api import train_pix2pix

    result = train_pix2pix(dataroot, output, netG=netG, norm=norm, dropout=not no_dropout, gan_mode=gan_mode,
                           lambda_l1=lambda_l1, batch_size=batch_size, **gan_fields(shared))
    report(result, **shared)


@train_app.command("cyclegan")
@options.taking(*GAN_OPTIONS, *TRAIN_OPTIONS)
def cyclegan(
    dataroot: DataRoot,
    output: RunDir,
    netG: NetG = "resnet_9blocks",
    norm: Norm = "instance",
    dropout: Annotated[bool, typer.Option("--dropout/--no-dropout", help="Dropout in the generators.")] = False,
    gan_mode: GanMode = "lsgan",
    lambda_a: Annotated[float, typer.Option("--lambda-a", metavar="X", min=0.0,
                                            help="Weight of the A -> B -> A cycle loss.")] = 10.0,
    lambda_b: Annotated[float, typer.Option("--lambda-b", metavar="X", min=0.0,
                                            help="Weight of the B -> A -> B cycle loss.")] = 10.0,
    lambda_identity: Annotated[float, typer.Option("--lambda-identity", metavar="X", min=0.0,
                                                   help="Identity loss, relative to the cycle weights.")] = 0.5,
    pool_size: Annotated[int, typer.Option("--pool-size", metavar="N", min=0,
                                           help="Generated images kept for the discriminators.")] = 50,
    batch_size: BatchSize = 1,
    **shared,
) -> None:
    """CycleGAN on DATAROOT/trainA and DATAROOT/trainB (unpaired)."""
    from ..train.api import train_cyclegan

    result = train_cyclegan(dataroot, output, netG=netG, norm=norm, dropout=dropout, gan_mode=gan_mode,
                            lambda_a=lambda_a, lambda_b=lambda_b, lambda_identity=lambda_identity,
                            pool_size=pool_size, batch_size=batch_size, **gan_fields(shared))
    report(result, **shared)


# --- DDPM -----------------------------------------------------------------------------------------------------
@train_app.command("ddpm")
@options.taking(*TRAIN_OPTIONS)
def ddpm(
    images: Annotated[Path, typer.Argument(metavar="IMAGES", show_default=False,
                                           help="A folder of training images (read recursively).")],
    output: RunDir,
    model_config: Annotated[Optional[Path], typer.Option(
        "--model-config", metavar="FILE", show_default=False,
        help="A diffusers UNet2DModel config.json to train from scratch (default: the CIFAR-10 U-Net).")] = None,
    start_from: Annotated[Optional[str], typer.Option(
        "--from", metavar="MODEL|FOLDER", show_default=False,
        help="Fine-tune a zoo model (e.g. ddpm-cifar10-32) or a diffusers folder.")] = None,
    resolution: Annotated[Optional[int], typer.Option(
        "--resolution", metavar="N", min=1, show_default=False,
        help="Images are resized and centre-cropped to N x N (default: the model's sample_size, 32).")] = None,
    steps: Annotated[int, typer.Option("--steps", metavar="N", min=1, help="Optimisation steps.")] = 800_000,
    lr: Annotated[float, typer.Option("--lr", metavar="X", min=0.0, help="Adam's peak learning rate.")] = 2e-4,
    warmup: Annotated[int, typer.Option("--warmup", metavar="N", min=0,
                                        help="Steps of linear warm-up from 0 to --lr.")] = 5000,
    grad_clip: Annotated[float, typer.Option("--grad-clip", metavar="X", min=0.0,
                                             help="Clip the gradient to this global norm (0: no clipping).")] = 1.0,
    ema_decay: Annotated[float, typer.Option("--ema-decay", metavar="X", min=0.0, max=1.0,
                                             help="Decay of the moving average that is saved and sampled.")] = 0.9999,
    dropout: Annotated[float, typer.Option("--dropout", metavar="X", min=0.0, max=0.99,
                                           help="Dropout in the U-Net's residual blocks.")] = 0.1,
    no_flip: NoFlip = False,
    sample_every: Annotated[Optional[int], typer.Option(
        "--sample-every", metavar="N", min=1, show_default=False,
        help="Steps between sample grids from the EMA weights (samples/; default: at the end).")] = None,
    fid_every: Annotated[Optional[int], typer.Option(
        "--fid-every", metavar="N", min=1, show_default=False,
        help="Steps between FIDs of EMA samples against --fid-ref, logged in log.jsonl (default --sample-every: "
        "N).")] = None,
    fid_ref: Annotated[Optional[Path], typer.Option(
        "--fid-ref", metavar="STATS.npz", show_default=False,
        help="Reference statistics for --fid-every (`imgforge eval fid-stats` of the training images).")] = None,
    fid_samples: Annotated[int, typer.Option("--fid-samples", metavar="N", min=2,
                                             help="EMA samples per FID (papers: 50000).")] = 1000,
    batch_size: BatchSize = 128,
    **shared,
) -> None:
    """DDPM (Ho et al. 2020) on a folder of images; RUN_DIR becomes a diffusers folder of the EMA weights."""
    from ..train.api import train_ddpm

    result = train_ddpm(
        images, output, model_config=str(model_config) if model_config else None, from_model=start_from,
        resolution=resolution, steps=steps, lr=lr, warmup=warmup, grad_clip=grad_clip, ema_decay=ema_decay,
        dropout=dropout, flip=not no_flip, sample_every=sample_every or fid_every, fid_every=fid_every,
        fid_ref=str(fid_ref) if fid_ref else None, fid_samples=fid_samples, batch_size=batch_size, **shared,
    )
    report(result, **shared)
