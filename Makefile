# hashtagkit: `make demo` and `make test` work on a fresh clone (they create .venv and install).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEMO   ?= demo

.PHONY: install dist system-deps test test-fast lint docs demo clean bench-extract bench-heads bench-planted bench-mlp-stream bench-demo bench-faults bench-startup \
        bench-extract-distributed bench-serve bench-eval-stream bench-scale bench-knn-ovr bench-beyond bench-options bench-roofline bench-roofline-extract gpu-check \
        bench-object-store

# constraints.txt: the exact versions the project is tested with (setup.py has lower bounds only).
$(STAMP): setup.py constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# The wheel and sdist users install, into dist/ (the wheel is built from the sdist, so the sdist is
# checked too); the venv's setuptools builds them, nothing is downloaded.
dist: $(STAMP)
	rm -rf dist
	$(BIN)/python -m build --no-isolation --outdir dist .

lint: $(STAMP)
	$(BIN)/ruff check .

# WordNet and Chromium from Debian for the lemmatisation and upload-page tests (root + apt-get;
# elsewhere it says what is missing and those tests skip with the reason).
system-deps:
	@bash scripts/system-deps.sh

test: $(STAMP) system-deps lint docs
	$(BIN)/python -m pytest -q

# The inner loop: everything but the tests marked slow (Dask clusters, torchrun, Chromium, compile,
# kill loops, real VGG-16 passes, the docs' pages run end to end); about 2 minutes on 2 cores.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

# The documentation (docs/, mkdocs.yml) built strictly into site/: a broken link, a page missing from the
# nav or a docstring reference that does not resolve fails. MkDocs is installed from docs/requirements.txt.
docs: $(STAMP)
	test -x $(BIN)/mkdocs || $(BIN)/python -m pip install -q -r docs/requirements.txt
	$(BIN)/mkdocs build --strict -d site

# The main job end to end on the embedded synthetic data, ending in result tables. No pretrained
# weights can be downloaded on our machines, so the demo extracts with RANDOM VGG-16 weights
# (said loudly and recorded in the store); with real weights, drop the --backbone options.
DEMO_N ?= 600
HEADS  ?= mlp,knn,ovr,popularity
demo: $(STAMP)
	rm -rf $(DEMO)
	$(BIN)/hashtagkit prepare demo -o $(DEMO)/demo.zarr --n $(DEMO_N) --seed 0
	$(BIN)/hashtagkit extract $(DEMO)/demo.zarr --backbone vgg16-object=random --backbone vgg16-scene=random
	$(BIN)/hashtagkit info $(DEMO)/demo.zarr
	$(BIN)/hashtagkit bench $(DEMO)/demo.zarr --heads $(HEADS) -o $(DEMO)/bench

# The demo's bench table, plots and a contact sheet of its mlp run, copied to benchmarks/results/demo/.
bench-demo: demo
	mkdir -p benchmarks/results/demo
	cp $(DEMO)/bench/table.md $(DEMO)/bench/results.csv $(DEMO)/bench/curves.png $(DEMO)/bench/per_class_recall.png benchmarks/results/demo/
	$(BIN)/hashtagkit show $(DEMO)/bench/runs/mlp-both-s0 --n 8 --overwrite -o benchmarks/results/demo/sheet.png

clean:
	rm -rf $(DEMO) .pytest_cache build *.egg-info

# Benchmarks: each writes a Markdown table under benchmarks/results/ (machine and versions included).
DEVICE ?= cpu
bench-extract: $(STAMP)
	nice -n 10 $(BIN)/python benchmarks/extract_throughput.py --n 64 --device $(DEVICE)

# VGG-16 to fc7 against the matmul peak of the same run, and the ways to run it (ROOFLINE_ARGS=--compile
# adds the compiled model and engine per backbone and the compile's cold/warm cost: ~20 minutes on 2 cores).
ROOFLINE_ARGS ?=
bench-roofline-extract: $(STAMP)
	nice -n 10 $(BIN)/python benchmarks/roofline_extract.py --device $(DEVICE) $(ROOFLINE_ARGS)

# `hashtagkit recommend` from process start to the first result: git revision 9525730 (before the
# fast start) against this checkout, cold and warm sha256 cache; two 528 MB VGG-16 files in a temp dir.
STARTUP_REPEATS ?= 3
bench-startup: $(STAMP)
	$(BIN)/python benchmarks/startup.py --repeats $(STARTUP_REPEATS)

# In-process vs `extract --cluster local:1` vs `--cluster local:2` on the same photos (a few minutes on 2 cores).
DIST_N ?= 96
bench-extract-distributed: $(STAMP)
	$(BIN)/python benchmarks/extract_distributed.py --n $(DIST_N)

# Evaluation in memory vs streamed (MetricAccumulator): peak memory and time at 20k-100k images x 1,000 classes.
bench-eval-stream: $(STAMP)
	$(BIN)/python benchmarks/eval_stream.py

# Fault injection (SIGKILL extract, a decode worker, an attribute writer; SIGTERM serve under load;
# delete a labels/split/paths chunk); < 10 minutes on 2 cores.
FAULT_TRIALS ?= 20
bench-faults: $(STAMP)
	$(BIN)/python benchmarks/faults.py --trials $(FAULT_TRIALS)

# `hashtagkit serve` at 1/4/16 clients against the model's own batch time, and the one-photo overhead
# (Server-Timing parts; against a git revision before); the random-weight VGG-16 pair (real compute).
# Optional rows: --batching-off, --cli-photos N (a process per photo). About 5 minutes on 2 idle cores.
bench-serve: $(STAMP)
	$(BIN)/python benchmarks/serve.py

bench-heads: $(STAMP)
	$(BIN)/python benchmarks/heads.py $(if $(wildcard ../shared/harrison/data_list.txt),--labels ../shared/harrison,)

# `hashtagkit bench` on the planted HARRISON-size store (HARRISON's labels when ../shared has them):
# every head x view, then the table, results.csv and plots are copied to benchmarks/results/planted/.
# The MLP is capped at 8 epochs to keep the run near an hour on a 2-core CPU.
PLANTED       ?= benchmarks/.cache/planted-harrison.zarr
PLANTED_BENCH ?= benchmarks/.cache/bench-planted
bench-planted: $(STAMP)
	test -d $(PLANTED) || $(BIN)/hashtagkit prepare planted -o $(PLANTED) $(if $(wildcard ../shared/harrison/data_list.txt),--labels ../shared/harrison,)
	$(BIN)/hashtagkit bench $(PLANTED) --set mlp.epochs=8 -o $(PLANTED_BENCH)
	mkdir -p benchmarks/results/planted
	cp $(PLANTED_BENCH)/table.md $(PLANTED_BENCH)/results.csv $(PLANTED_BENCH)/curves.png $(PLANTED_BENCH)/per_class_recall.png benchmarks/results/planted/

# Heads beyond the paper's MLP (issue #15): knn, mlp, tagprop and fusion (mlp + knn), both views, seeds
# 0,1,2, on the demo store (random weights) and the planted HARRISON-size store; each table is copied to
# benchmarks/results/beyond/fusion_tagprop_{demo,planted}.md under a line naming the commit. MLP at hidden
# 1,024 (3 epochs on planted); fusion refits its components on every training row once its weights are
# chosen (final_fit=all, the default), so its mlp is the mlp row's. Under an hour on 2 idle cores.
BEYOND ?= benchmarks/.cache/beyond
BEYOND_SETS = --heads knn,mlp,fusion,tagprop --features both --seeds 0,1,2 --set mlp.hidden=1024
bench-beyond: $(STAMP)
	test -d $(BEYOND)/demo.zarr || ($(BIN)/hashtagkit prepare demo -o $(BEYOND)/demo.zarr --n $(DEMO_N) --seed 0 \
	  && $(BIN)/hashtagkit extract $(BEYOND)/demo.zarr --backbone vgg16-object=random --backbone vgg16-scene=random)
	test -d $(PLANTED) || $(BIN)/hashtagkit prepare planted -o $(PLANTED) $(if $(wildcard ../shared/harrison/data_list.txt),--labels ../shared/harrison,)
	nice -n 10 $(BIN)/hashtagkit bench $(BEYOND)/demo.zarr $(BEYOND_SETS) -o $(BEYOND)/bench-demo
	nice -n 10 $(BIN)/hashtagkit bench $(PLANTED) $(BEYOND_SETS) --set mlp.epochs=3 -o $(BEYOND)/bench-planted
	mkdir -p benchmarks/results/beyond
	for s in demo planted; do (echo "Code: commit $$(git rev-parse --short HEAD)."; echo; cat $(BEYOND)/bench-$$s/table.md; \
	  echo; $(BIN)/python benchmarks/beyond_seeds.py $(BEYOND)/bench-$$s) > benchmarks/results/beyond/fusion_tagprop_$$s.md; done

# Time and peak memory against N (57,383 / 250,000 / 1,000,000 planted rows): about 1.5 hours, ~10 GB of disk.
bench-scale: $(STAMP)
	$(BIN)/python benchmarks/scale.py

# kNN's index choice (IVF-PQ / IVF / Flat: recall, P@1, time, memory) and ovr's max_rows on a larger
# planted store (300,000 rows, ~5 GB, in ../tmp-knn), and both heads against the previous code at
# HARRISON size: about an hour on 2 shared cores.
bench-knn-ovr: $(STAMP)
	nice $(BIN)/python benchmarks/knn_ovr_size.py $(if $(wildcard ../shared/harrison/data_list.txt),--labels ../shared/harrison,)

# MLP trained cached vs streamed on the planted HARRISON-size store (bench-planted's, made if missing): the paper's
# hidden 4,096, 5 epochs, 3 seeds per path (alternating): about 40 minutes on 2 idle cores.
MLP_STREAM_STORE ?= $(PLANTED)
bench-mlp-stream: $(STAMP)
	nice $(BIN)/python benchmarks/mlp_stream.py --store $(MLP_STREAM_STORE) --epochs 5 --hidden 4096 --seeds 0,1,2

# Issue #15's options, 3 seeds: mlp vs mlp loss=asl, each head with and without co-occurrence re-ranking,
# F1 at the thresholds chosen on validation rows; on the demo store (`make demo`'s) and the planted
# HARRISON-size store (MLP hidden 1024 x 6 epochs on the demo, 512 x 3 on the planted store): about
# an hour on 2 shared cores.
bench-options: $(STAMP)
	test -d $(DEMO)/demo.zarr || $(MAKE) demo
	test -d $(PLANTED) || $(BIN)/hashtagkit prepare planted -o $(PLANTED) $(if $(wildcard ../shared/harrison/data_list.txt),--labels ../shared/harrison,)
	nice -n 10 $(BIN)/python benchmarks/options.py --store $(DEMO)/demo.zarr --workdir benchmarks/.cache/options-demo --out benchmarks/results/beyond/options_demo.md
	nice -n 10 $(BIN)/python benchmarks/options.py --store $(PLANTED) --workdir benchmarks/.cache/options-planted --out benchmarks/results/beyond/options_planted.md \
		--mlp-hidden 512 --mlp-epochs 3

# The machine's peaks (matmul bf16/fp16/fp32 at the models' shapes, memory bandwidth) and every hot path
# against them (MLP plain loop vs the head cached/streamed, kNN, ovr, evaluation): benchmarks/results/roofline.md.
# Makes a planted HARRISON-size store in benchmarks/.cache/roofline if missing; ~20 minutes on 2 busy cores.
bench-roofline: $(STAMP)
	nice -n 10 $(BIN)/python benchmarks/roofline.py --device $(DEVICE)

# The MLP's training step against the bf16 matmul rate at its own GEMM shapes (issue #27 item 1), side by side:
# the step's GEMMs alone, the autocast loop (before), MasterWeightStep (what MLPHead runs on a bf16 CPU now) and
# the step between, MLPHead with each, a profile of both; then MLPHead fitted with each step on the planted
# HARRISON-size store (made if missing), 3 seeds x 1 epoch, evaluated: benchmarks/results/mlp_step.md.
# About 3 minutes for the speed part and 25 for the quality part on 2 cores.
.PHONY: bench-mlp-step
MLP_STEP_STORE ?= $(PLANTED)
bench-mlp-step: $(STAMP)
	test -d $(MLP_STEP_STORE) || $(BIN)/hashtagkit prepare planted -o $(MLP_STEP_STORE) $(if $(wildcard ../shared/harrison/data_list.txt),--labels ../shared/harrison,)
	nice -n 10 $(BIN)/python benchmarks/mlp_step.py --quality $(MLP_STEP_STORE) --seeds 0,1,2 --epochs 1

# GPU, ready to be measured (issue #27 item 4), in under 10 minutes: the CUDA-dependent tests, extract on CUDA
# (fp16, default and --decode gpu) against the model alone and the CPU fp32 features, the MLP step against the
# matmul peak, faiss-gpu against faiss-cpu, DDP with NCCL on the GPUs there are (gloo on 2 CPU processes
# everywhere). Without CUDA the CUDA rows say "skipped (no CUDA)" and the rest runs (~3 minutes on 2 cores).
# One table: benchmarks/results/gpu_check.md.
gpu-check: $(STAMP)
	$(BIN)/python benchmarks/gpu_check.py

# The pipeline on object storage against a local disk (issue #26): prepare, extract (resnet50-object, random
# weights), fit mlp (streamed) / knn and evaluate, on moto's S3 server on loopback (started by the script, every
# request counted through tests/s3.py's FaultProxy) and on the disk, interleaved, best of 3; then the arithmetic
# for 100 M photos in shards on real object storage: benchmarks/results/object_store.md. 3-4 minutes on 2 idle
# cores, up to 10 on busy ones.
OBJECT_STORE_N ?= 256
bench-object-store: $(STAMP)
	$(BIN)/python benchmarks/object_store.py --n $(OBJECT_STORE_N)
