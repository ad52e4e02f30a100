# The two commands a newcomer needs: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: install demo test lint clean peers docs docs-serve

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# torch first, pinned: a bare `torch` requirement would pull the CUDA build.
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[dev]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/nmtkit demo

test: install
	$(VENV)/bin/ruff check nmtkit tests benchmarks
	$(PY) -m pytest -q -n 2  # two workers: the suite is mostly single-threaded
	# again, as a CPU with AVX2 only (no AVX512, no native bf16: most laptops) would run them: the
	# tests of precision, packed and int8 linears and attention (marker avx2, pyproject.toml);
	# MKL too, which does the fp32 matrix products and would pick AVX512 by itself
	ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 $(PY) -m pytest -q -n 2 -m avx2

docs: install  # the site, strict and offline, into site/
	$(VENV)/bin/mkdocs build --strict --site-dir site

docs-serve: install  # a preview that rebuilds on change; the tutorials at their small budget
	NMTKIT_TUTORIAL_BUDGET=small $(VENV)/bin/mkdocs serve

clean:  # what the demo and the tests made; never your own runs or prepared data
	rm -rf demo-data runs/demo-rnn-* runs/demo-transformer-* runs/demo-vit .pytest_cache .ruff_cache site

# The peers of the side-by-side benchmarks (benchmarks/README.md), each in a virtual environment
# of its own under .venv-peers/, never nmtkit's dependencies; torch==2.13.0 (CPU) first in each.
PEERS ?= .venv-peers
peers: $(PEERS)/hf/.installed $(PEERS)/hf-constraints/.installed $(PEERS)/joey/.installed $(PEERS)/onmt/.installed

$(PEERS)/hf/.installed:  # Hugging Face transformers and CTranslate2
	python3 -m venv $(PEERS)/hf
	$(PEERS)/hf/bin/pip install -q torch==2.13.0
	$(PEERS)/hf/bin/pip install -q transformers ctranslate2 sentencepiece sacrebleu numpy pydantic pyyaml safetensors tqdm
	$(PEERS)/hf/bin/python -c 'import torch; assert torch.__version__.startswith("2.13.0"), torch.__version__'
	touch $@

# transformers<4.56 for bench_constraints --hf: later versions fetch constrained beam search
# (force_words_ids) from the Hub, and CTranslate2's converter no longer loads models with them
$(PEERS)/hf-constraints/.installed:
	python3 -m venv $(PEERS)/hf-constraints
	$(PEERS)/hf-constraints/bin/pip install -q torch==2.13.0
	$(PEERS)/hf-constraints/bin/pip install -q "transformers<4.56" sentencepiece sacrebleu numpy pydantic pyyaml safetensors tqdm protobuf
	$(PEERS)/hf-constraints/bin/python -c 'import torch; assert torch.__version__.startswith("2.13.0"), torch.__version__'
	touch $@

$(PEERS)/joey/.installed:  # Joey NMT 2.3 (and importlib_metadata, which it does not declare)
	python3 -m venv $(PEERS)/joey
	$(PEERS)/joey/bin/pip install -q torch==2.13.0
	$(PEERS)/joey/bin/pip install -q joeynmt==2.3.0 importlib_metadata
	$(PEERS)/joey/bin/python -c 'import torch; assert torch.__version__.startswith("2.13.0"), torch.__version__'
	touch $@

$(PEERS)/onmt/.installed:  # OpenNMT-py 3.5.1 pins torch<2.3: without its dependencies, then theirs
	python3 -m venv $(PEERS)/onmt
	$(PEERS)/onmt/bin/pip install -q torch==2.13.0
	$(PEERS)/onmt/bin/pip install -q --no-deps OpenNMT-py==3.5.1
	$(PEERS)/onmt/bin/pip install -q configargparse waitress "pyonmttok<2,>=1.37" rapidfuzz pyahocorasick \
		spacy flask fasttext-wheel sentencepiece sacrebleu numpy pyyaml tensorboard
	$(PEERS)/onmt/bin/python -c 'import torch; assert torch.__version__.startswith("2.13.0"), torch.__version__'
	touch $@
