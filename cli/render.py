"""Terminal rendering shared by the commands: progress bars, errors, option groups."""

from __future__ import annotations

import logging
import os
import sys
from typing import Any, Callable

import click

from curator.config import ATTN_IMPLEMENTATIONS, DEVICE_ENV, DTYPES, DeviceConfig, LoraSettings, ProgressFn
from curator.errors import CuratorError


class CuratorGroup(click.Group):
    """A click group that turns a CuratorError into one line on stderr and its exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except CuratorError as exc:
            _close_bars(ctx)
            if not getattr(exc, "quiet", False):  # another rank of the job already said it
                click.echo(f"error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            _close_bars(ctx)
            click.echo("interrupted: rerun the same command to continue (index, align and generate keep their finished work)", err=True)
            sys.exit(130)
        except (click.exceptions.Exit, click.ClickException, SystemExit):
            raise
        except Exception as exc:  # a bug, not bad input: one line, the traceback on request
            if os.environ.get("CURATOR_DEBUG"):
                raise
            _close_bars(ctx)
            click.echo(f"error: internal error {type(exc).__name__}: {exc} (set CURATOR_DEBUG=1 for the traceback, and please report it)", err=True)
            sys.exit(1)


class Bars:
    """A ProgressFn that shows one tqdm bar per stage on stderr (or nothing when quiet)."""

    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet or os.environ.get("RANK", "0") not in ("", "0")  # one rank of a torchrun job draws
        self._bars: dict[str, Any] = {}

    def __call__(self, stage: str, done: int, total: int) -> None:
        if self.quiet:
            return
        from tqdm import tqdm

        bar = self._bars.get(stage)
        if bar is None:
            bar = self._bars[stage] = tqdm(total=total, desc=stage, unit="ex" if "index" in stage else "it", file=sys.stderr, leave=True, dynamic_ncols=True)
        bar.total = total
        bar.n = done
        bar.refresh()
        if done >= total:
            bar.close()

    def close(self) -> None:
        for bar in self._bars.values():
            bar.close()


def progress(ctx: click.Context) -> ProgressFn:
    """The command's progress bars; kept on the root context so an error can close them first."""
    bars = Bars(quiet=bool(ctx.find_root().params.get("quiet")))
    ctx.find_root().meta.setdefault("curator.bars", []).append(bars)
    return bars


def _close_bars(ctx: click.Context) -> None:
    """Close open progress bars so an error message starts on its own line."""
    for bars in ctx.find_root().meta.get("curator.bars", []):
        bars.close()


def lora_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """--lora-r/--lora-alpha/--lora-targets/--lora-seed."""
    f = click.option("--lora-seed", type=int, default=0, show_default=True, help="Seed of the LoRA initialisation.")(f)
    f = click.option("--lora-targets", default="q_proj,k_proj,v_proj,o_proj", show_default=True, help="Comma-separated module names that get LoRA.")(f)
    f = click.option("--lora-alpha", type=int, default=16, show_default=True, help="LoRA alpha.")(f)
    f = click.option("--lora-r", type=int, default=8, show_default=True, help="LoRA rank.")(f)
    return f


def lora_from(kw: dict[str, Any]) -> LoraSettings:
    targets = tuple(t.strip() for t in kw.pop("lora_targets").split(",") if t.strip())
    return LoraSettings(r=kw.pop("lora_r"), alpha=kw.pop("lora_alpha"), target_modules=targets, seed=kw.pop("lora_seed"))


def device_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """--device/--dtype/--attn-implementation, for every command that runs a model."""
    f = click.option("--attn-implementation", "attn_implementation", type=click.Choice(ATTN_IMPLEMENTATIONS), default="auto", show_default=True, help="Attention kernel; auto: flash-attention varlen for packed batches where flash-attn is installed (CUDA, bf16/fp16), else SDPA.")(f)
    f = click.option("--dtype", type=click.Choice(DTYPES), default="auto", show_default=True, help="Compute dtype; auto: bf16 on a GPU that supports it, else fp32. On a GPU the weights load in it; on the CPU bf16 runs under autocast.")(f)
    f = click.option("--device", default=None, metavar="auto|cpu|cuda|cuda:N|mps", help=f"Where the model runs [default: ${DEVICE_ENV}, else auto: CUDA, then MPS, then the CPU].")(f)
    return f


def device_from(kw: dict[str, Any]) -> DeviceConfig:
    """The DeviceConfig of --device/--dtype/--attn-implementation, checked against this machine
    before anything is read or written. The device is printed once, when the model loads
    (``device: cuda:0 (NVIDIA H100 80GB HBM3), bf16`` on stdout, from curator.model.models)."""
    from curator.model.device import resolve

    config = DeviceConfig(device=kw.pop("device"), dtype=kw.pop("dtype"), attn_implementation=kw.pop("attn_implementation"))
    resolve(config)
    return config


class _Say(logging.Handler):
    """Prints the library's messages, one line each: what it chose (the device) on stdout, with
    the command's other results; warnings (out-of-memory back-off) on stderr as ``note: ...``."""

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if record.levelno >= logging.WARNING:
            click.echo(f"note: {text}", err=True)
        else:
            click.echo(text)


def say_library_warnings() -> None:
    log = logging.getLogger("curator")
    if not any(isinstance(h, _Say) for h in log.handlers):
        log.addHandler(_Say(level=logging.INFO))
        log.setLevel(logging.INFO)
        log.propagate = False


model_option = click.option("--model", default="smollm2-135m", show_default=True, help="Model spec: smollm2-135m (bundled), tiny-random, a local HF folder, or a hub id (online only).")


def render_side_by_side(rows: list[dict[str, Any]]) -> str:
    """A plain-text table: strategy, relative influence (in-task, cross-task), mean alignment metrics."""

    def num(v: Any, signed: bool = False) -> str:
        return "n/a" if v is None else (f"{v:+.4f}" if signed else f"{v:.4f}")

    extra = [m for m in ("alignment", "perplexity", "sappl") if m in rows[0]]
    header = ["strategy", "in-task Δinfluence", "cross-task Δinfluence", *[f"mean {m}" for m in extra]]
    body = [
        [r["strategy"], f"{num(r['in_task_influence'], True)} ({r['in_task_verdict']})", f"{num(r['cross_task_influence'], True)} ({r['cross_task_verdict']})", *[num(r[m]) for m in extra]]
        for r in rows
    ]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *body)]
    return "\n".join("  ".join(str(x).ljust(w) for x, w in zip(line, widths)).rstrip() for line in [header, *body])
