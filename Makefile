# The two commands: `make demo` and `make test`. Each makes its own virtual environment.
# The interpreter the virtual environment is made from. CPython built with profile-guided and
# link-time optimisation (Debian's and Ubuntu's python3.11 packages are) runs carebridge ~10 %
# faster than a build without (pyenv's default): an HL7 v2 message costs 2.03-2.12 against
# 2.28-2.39 ms of CPU in process on this machine (bench/hl7v2_cpu.py, alternating). So the
# distribution's python3.11 is used when it can make virtual environments, python3 otherwise;
# `make test PYTHON=...` chooses another.
SYSTEM_PYTHON := /usr/bin/python3.11
ifeq ($(origin PYTHON),undefined)
PYTHON := $(shell $(SYSTEM_PYTHON) -c 'import ensurepip, venv' >/dev/null 2>&1 \
	&& echo $(SYSTEM_PYTHON) || echo python3)
endif
VENV := .venv
BIN := $(VENV)/bin
# One stamp per interpreter: choosing another one makes the environment again.
STAMP := $(VENV)/.installed$(subst /,-,$(PYTHON))

.PHONY: demo test lint typecheck bench definitions clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv --clear $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/carebridge demo

test: $(STAMP)
	$(BIN)/ruff check src tests bench tools
	$(BIN)/mypy
	$(BIN)/pytest

bench: $(STAMP)
	$(BIN)/python bench/ingest.py

definitions: $(STAMP)
	$(BIN)/python tools/build_definitions.py ../shared/fhir-r4/hl7.fhir.r4.examples-4.0.1.tgz

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
