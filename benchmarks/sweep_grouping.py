"""Our grouping against timm's and Hugging Face's, on every architecture both libraries build.

For every timm model name (``timm.list_models()``, taken round-robin over
timm's model modules so that a partial run covers every family first) and
every Hugging Face architecture (each ``model_type`` that ``AutoModel`` maps,
with its default configuration built in code, depth cut to 2 layers where the
configuration allows), the model is built on the meta device (no weights, no
downloads), then:

* our groups are checked: every trainable tensor exactly once;
* our verdicts are compared with timm's ``param_groups_weight_decay`` (given the
  model's ``no_weight_decay()``, as timm's optimizer factory does) and with
  ``Trainer.get_decay_parameter_names``;
* each parameter on which a verdict differs is classified by the rule behind
  our verdict (a gain with singleton dims, a bias found by name, a declaration,
  ...).

One JSON line per architecture goes to ``--records``; a run resumes where the
file ends, and ``--report`` renders the Markdown tables quoted in the README
from the file alone. Needs the ``zoo`` extra and timm
(``pip install --no-deps timm==1.0.31``).

Usage::

    python benchmarks/sweep_grouping.py --records sweep.jsonl     # hours on 2 busy cores
    python benchmarks/sweep_grouping.py --records sweep.jsonl --limit 20
    python benchmarks/sweep_grouping.py --records sweep.jsonl --report
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import warnings
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.core import real_models
from wd_lightning import explain_param_groups

Builder = Callable[[], nn.Module]
REFERENCES = ("timm", "Hugging Face")
# Configuration fields that set a depth; the sweep cuts them to 2 layers.
DEPTH_FIELDS = (
    "num_hidden_layers",
    "num_layers",
    "encoder_layers",
    "decoder_layers",
    "n_layer",
    "n_layers",
    "num_decoder_layers",
)


def timm_architectures() -> Iterator[tuple[str, Builder]]:
    timm = real_models.import_timm()
    by_module = [timm.list_models(module=module) for module in timm.list_modules()]
    listed = set(timm.list_models())
    seen: set[str] = set()
    for names in itertools.zip_longest(*by_module):
        for name in names:
            if name is not None and name in listed and name not in seen:
                seen.add(name)
                yield name, lambda name=name: real_models.timm_model(name)


def hf_architectures() -> Iterator[tuple[str, Builder]]:
    import transformers
    from transformers.models.auto.modeling_auto import MODEL_MAPPING_NAMES

    def build(model_type: str) -> nn.Module:
        config = transformers.AutoConfig.for_model(model_type)
        shallow = transformers.AutoConfig.for_model(model_type)
        for config_field in DEPTH_FIELDS:
            if isinstance(getattr(shallow, config_field, None), int):
                setattr(shallow, config_field, min(2, getattr(shallow, config_field)))
        try:
            return real_models.hf_model(shallow)
        except Exception:  # the depth is tied to other fields: the default configuration
            return real_models.hf_model(config)

    for model_type in sorted(MODEL_MAPPING_NAMES):
        yield model_type, lambda model_type=model_type: build(model_type)


def record(library: str, name: str, build: Builder) -> dict[str, Any]:
    """One architecture: built or not, exactly once or not, and each difference."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = build()
    except Exception as error:  # a model that does not build on the meta device
        return {"library": library, "name": name, "built": False, "error": type(error).__name__}
    report = explain_param_groups(model, 0.1)
    placed = [id(p) for group in report.groups for p in group["params"]]
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    shapes = {n: list(p.shape) for n, p in model.named_parameters()}
    references = {
        "timm": real_models.timm_decayed(model),
        "Hugging Face": real_models.hf_decayed(model),
    }
    return {
        "library": library,
        "name": name,
        "built": True,
        "tensors": len(trainable),
        "exactly_once": len(placed) == len(set(placed)) and set(placed) == trainable,
        "differences": {
            reference: [
                [n, we_decay, family, shapes[n]]
                for n, we_decay, family in real_models.differences(model, decayed, report)
            ]
            for reference, decayed in references.items()
        },
    }


def markdown(records: list[dict[str, Any]]) -> str:
    libraries = list(dict.fromkeys(r["library"] for r in records))
    lines = [
        "| library | architectures swept | built on meta | exactly once |",
        "|---|---|---|---|",
    ]
    for library in libraries:
        mine = [r for r in records if r["library"] == library]
        built = [r for r in mine if r["built"]]
        once = sum(r["exactly_once"] for r in built)
        lines.append(f"| {library} | {len(mine)} | {len(built)} | {once} of {len(built)} |")
    for library, reference in itertools.product(libraries, REFERENCES):
        built = [r for r in records if r["library"] == library and r["built"]]
        kinds: Counter[tuple[str, str]] = Counter()
        models: dict[tuple[str, str], set[str]] = defaultdict(set)
        examples: dict[tuple[str, str], str] = {}
        for r in built:
            for name, we_decay, family, shape in r["differences"][reference]:
                key = ("we decay, it does not" if we_decay else "it decays, we do not", family)
                kinds[key] += 1
                models[key].add(r["name"])
                examples.setdefault(key, f"{r['name']}: `{name}` {shape}")
        differing = sum(1 for r in built if r["differences"][reference])
        tensors = sum(r["tensors"] for r in built)
        lines += [
            "",
            f"{library} architectures against {reference}'s rule: {differing} of {len(built)} "
            f"differ somewhere; {sum(kinds.values()):,} of {tensors:,} tensors differ.",
            "",
            "| difference | our rule | tensors | models | example |",
            "|---|---|---|---|---|",
        ]
        for key, count in kinds.most_common():
            direction, family = key
            lines.append(
                f"| {direction} | {family} | {count:,} | {len(models[key])} | {examples[key]} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=Path, required=True, help="JSON lines, appended")
    parser.add_argument("--library", choices=["timm", "hf", "both"], default="both")
    parser.add_argument("--limit", type=int, default=None, help="first N architectures of each")
    parser.add_argument("--report", action="store_true", help="only render the records")
    args = parser.parse_args(argv)
    done = []
    if args.records.exists():
        done = [json.loads(line) for line in args.records.read_text().splitlines() if line]
    if not args.report:
        torch.set_num_threads(1)
        seen = {(r["library"], r["name"]) for r in done}
        sources = []
        if args.library in ("timm", "both"):
            sources.append(("timm", timm_architectures))
        if args.library in ("hf", "both"):
            sources.append(("Hugging Face", hf_architectures))
        with args.records.open("a") as out:
            for library, architectures in sources:
                for name, build in itertools.islice(architectures(), args.limit):
                    if (library, name) in seen:
                        continue
                    result = record(library, name, build)
                    out.write(json.dumps(result) + "\n")
                    out.flush()
                    done.append(result)
    print(markdown(done))


if __name__ == "__main__":
    main()
