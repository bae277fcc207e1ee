# kp2d_ros: `make demo` and `make test` work on a fresh machine with Python 3.11 and the package registries.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# DDS must stay on this machine: never multicast discovery off the loopback interface.
export ROS_AUTOMATIC_DISCOVERY_RANGE := LOCALHOST
export ROS_DOMAIN_ID ?= $(shell expr $$$$ % 100 + 100)
export RMW_IMPLEMENTATION ?= rmw_fastrtps_cpp

.PHONY: install demo test test-all scorecard clean

$(VENV)/.installed: setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[ros,test]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/kp2d demo --out out/demo

test: install
	$(PY) -m pytest -q test

test-all: install
	$(PY) -m pytest -q --runslow test

# the headline numbers and issues 10's and 13's targets in one run (10 min on stop 38's 2-core CPU; needs ../shared/data)
scorecard: install
	$(VENV)/bin/kp2d scorecard ../shared/data --out out/scorecard

clean:
	rm -rf out build install log .pytest_cache
