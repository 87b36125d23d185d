"""The Ray executor's cost: local executor vs ``sf.RayExecutor`` with 1 and 2 CPU actors.

Workload 1's question ("is the title related to the history of Europe?") over ``--titles``
distinct BBC titles (default 200), one ``classify`` step, ``cache=False``:

- **deterministic** engine (default): it answers in microseconds, so what is measured is the Ray
  executor's overhead alone -- shipping the requests as Arrow blocks, starting the actor pool
  (each actor imports semframe and builds its engine), answering, bringing the outcomes back;
- **smollm2** (``--engine smollm2``): each actor builds an in-process ``VLLMEngine`` on the
  packaged SmolLM2-135M (one thread each): 1 vs 2 actors is the scale-out.

One process, one local Ray cluster (loopback only, ``--cpus`` CPUs, started once and not timed:
its start is reported apart). Local, 1 actor and 2 actors are run side by side, interleaved,
``--repeats`` times; medians are reported. Prints a table and writes
``docs/results/ray_actors.md`` and ``.json``.

    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.ray_actors [--titles 200] [--engine deterministic|smollm2]
        [--mode data|pool] [--repeats 3] [--cpus 2] [--no-write]

``--mode`` is the executor's mode (docs/scale-out.md): ``data`` (default; the step is one Ray Data
execution) or ``pool`` (the local operator on the driver, each engine batch split over a pool of
actors); ``pool`` writes ``ray_actors[_smollm2]_pool.md``.

**The GPU variant** (``--engine llama8b-dummy --gpus N``), for a node (or cluster) with N GPUs
and the GPU build of vLLM (``SEMFRAME_EXTRAS=gpu``): one replica per GPU
(``num_gpus_per_actor=1``), each an in-process ``VLLMEngine`` of a Llama-3-8B-shaped model
(hidden 4096, 32 layers, 32 heads, 8 KV heads, intermediate 14336) with ``load_format="dummy"``:
random weights, so nothing is downloaded and the throughput is an 8B model's while the answers
are noise (the tokenizer and chat template are SmolLM2's). It compares the local executor (one
replica in the driver) with 1 and N actors, unchanged otherwise; ``--address`` joins an existing
cluster (``ray start --head`` ...) instead of starting a local one, and ``--model-dir`` puts the
model folder on a path every node sees. On a machine without a GPU it stops with a message.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # loopback only (before ray is imported)
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("OMP_NUM_THREADS", "1")

from benchmarks._common import machine_facts, markdown_table  # noqa: E402
from benchmarks.workloads import TITLES_INSTRUCTION, distinct_titles  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "results" / "ray_actors.md"


def _smollm2_factory():
    """What each actor builds (sent by value: a closure)."""
    def make():
        import semframe as sf
        from semframe.engines.models import default_model_dir

        return sf.VLLMEngine(str(default_model_dir(quiet=True)))

    return make


#: Llama-3-8B's shapes (the weights are random: ``load_format="dummy"``).
LLAMA_8B_SHAPES = {"hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
                   "num_attention_heads": 32, "num_key_value_heads": 8, "rope_theta": 500000.0,
                   "max_position_embeddings": 8192, "rms_norm_eps": 1e-5}


def llama8b_dummy_dir(folder: Path) -> Path:
    """A model folder vLLM can start with ``load_format="dummy"``: an 8B-shaped Llama config and
    SmolLM2's tokenizer files (no weights)."""
    from semframe.engines.models import default_model_dir

    source = default_model_dir(quiet=True)
    folder.mkdir(parents=True, exist_ok=True)
    config = json.loads((source / "config.json").read_text())
    config.update(LLAMA_8B_SHAPES, architectures=["LlamaForCausalLM"], model_type="llama", torch_dtype="bfloat16",
                  tie_word_embeddings=False, head_dim=128)
    (folder / "config.json").write_text(json.dumps(config, indent=1))
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json"):
        if (source / name).is_file():
            shutil.copy(source / name, folder / name)
    return folder


def _dummy_factory(folder: str):
    """What each GPU actor builds: one replica of the 8B-shaped model on its GPU."""
    def make():
        import semframe as sf

        return sf.VLLMEngine(folder, load_format="dummy", max_model_len=2048)

    return make


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--titles", type=int, default=200)
    ap.add_argument("--engine", choices=("deterministic", "smollm2", "llama8b-dummy"), default="deterministic")
    ap.add_argument("--gpus", type=int, default=0, help="GPUs (one replica each) for --engine llama8b-dummy")
    ap.add_argument("--address", default=None, help="join this Ray cluster instead of starting a local one")
    ap.add_argument("--model-dir", default=None, help="where the 8B-shaped model folder goes (a path every node sees)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--mode", choices=("data", "pool"), default="data")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()

    os.environ["SEMFRAME_CACHE_DIR"] = tempfile.mkdtemp(prefix="sf-bench-ray-")
    import polars as pl
    import ray

    import semframe as sf

    titles = distinct_titles(args.titles)
    plan = pl.DataFrame({"title": titles}).lazy().semantic.classify(
        "title", ["YES", "NO"], instruction=TITLES_INSTRUCTION, name="europe")
    gpu = args.engine == "llama8b-dummy"
    if gpu:
        import torch

        if args.gpus < 1 or not torch.cuda.is_available():
            sys.exit("--engine llama8b-dummy needs --gpus N >= 1 and a CUDA GPU with the GPU build of vLLM "
                     "(SEMFRAME_EXTRAS=gpu bash scripts/setup.sh); this machine has none")
        folder = llama8b_dummy_dir(Path(args.model_dir or tempfile.mkdtemp(prefix="sf-llama8b-")))
        actor_engine = _dummy_factory(str(folder))
        local_engine = _dummy_factory(str(folder))()
    elif args.engine == "deterministic":
        actor_engine: object = "deterministic"
        local_engine: object = "deterministic"
    else:
        from semframe.engines.models import default_model_dir

        actor_engine = _smollm2_factory()
        local_engine = sf.VLLMEngine(str(default_model_dir(quiet=True)))

    temp = tempfile.mkdtemp(prefix="sf-ray-")
    t = time.perf_counter()
    if args.address:
        ray.init(address=args.address, configure_logging=False, log_to_driver=False)
    else:
        ray.init(num_cpus=args.cpus, num_gpus=args.gpus or None, include_dashboard=False, _temp_dir=temp,
                 configure_logging=False, log_to_driver=False)
    init_s = time.perf_counter() - t
    many = args.gpus if gpu else 2
    modes = {"local": None, "ray, 1 actor": 1, f"ray, {many} actors": many}
    # Interleaved repeats; on GPUs the driver's own replica would hold GPU 0 while actors want it,
    # so the local runs go first and that replica is closed before the actors start.
    order = ([("local", r) for r in range(args.repeats)] + [(m, r) for r in range(args.repeats) for m in modes if m != "local"]
             if gpu else [(m, r) for r in range(args.repeats) for m in modes])
    times: dict[str, list[float]] = {m: [] for m in modes}
    answers: dict[str, list] = {}
    for mode, r in order:
        actors = modes[mode]
        if gpu and actors is not None and not isinstance(local_engine, str) and not local_engine.closed:
            local_engine.close()
        t = time.perf_counter()
        if actors is None:
            result = plan.run(local_engine, cache=False, progress=False)
        else:
            result = plan.run(actor_engine, cache=False, progress=False,
                              executor=sf.RayExecutor(num_actors=actors, mode=args.mode,
                                                      num_gpus_per_actor=1 if gpu else 0))
        times[mode].append(time.perf_counter() - t)
        assert result.df.height == len(titles) and result.metrics["engine_requests"].item() == len(titles)
        answers.setdefault(mode, result.df["europe"].to_list())
        print(f"[bench] repeat {r} {mode}: {times[mode][-1]:.2f} s", file=sys.stderr, flush=True)
    ray.shutdown()
    shutil.rmtree(temp, ignore_errors=True)
    shutil.rmtree(os.environ["SEMFRAME_CACHE_DIR"], ignore_errors=True)

    base = statistics.median(times["local"])
    rows = []
    for mode in modes:
        med = statistics.median(times[mode])
        same = sum(a == b for a, b in zip(answers[mode], answers["local"]))
        rows.append([mode, f"{med:.2f}", f"{len(titles) / med:.1f}", f"{med / base:.2f}x",
                     f"{same}/{len(titles)}"])
    one, two = statistics.median(times["ray, 1 actor"]), statistics.median(times[f"ray, {many} actors"])
    table = markdown_table(["executor", "median s", "rows/s", "vs local", "same answers as local"], rows)
    facts = machine_facts()
    print(table)
    print(f"ray.init: {init_s:.1f} s; {many} actors vs 1: {one / two:.2f}x throughput")
    if args.no_write:
        return
    name = {"deterministic": "ray_actors", "smollm2": "ray_actors_smollm2", "llama8b-dummy": "ray_actors_gpu"}[args.engine]
    if args.mode == "pool":
        name += "_pool"
    out = OUT.with_name(f"{name}.md")
    text = (f"# Ray executor: local vs 1 vs {many} {'GPU' if gpu else 'CPU'} actors ({args.engine} engine, "
            f"{args.mode} mode)\n\n"
            f"`OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.ray_actors --titles {args.titles} "
            f"--engine {args.engine} --mode {args.mode} --repeats {args.repeats} --cpus {args.cpus}`\n\n"
            f"{len(titles)} distinct BBC titles, one classify step (workload 1's question), cache off; "
            f"a local Ray cluster of {args.cpus} CPUs (loopback only), started once: `ray.init` took "
            f"{init_s:.1f} s (not in the times). Each Ray run starts its actor pool (each actor imports "
            f"semframe and builds its engine) and tears it down at the end. Medians of {args.repeats} "
            "interleaved runs. The local engine is made once and kept, so its start is in the first "
            "repeat only; every Ray run starts its actors' engines again.\n\n"
            f"{table}\n\n{many} actors vs 1: **{one / two:.2f}x** throughput.\n\n"
            f"Machine: {json.dumps(facts)}\n")
    out.write_text(text)
    out.with_suffix(".json").write_text(json.dumps(
        {"engine": args.engine, "mode": args.mode, "titles": len(titles), "cpus": args.cpus, "ray_init_s": init_s, "times_s": times,
         "machine": facts}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
