# dpg_nb developer tasks. `make test` is what README.md's test command and CI run.
.PHONY: test test-nbs test-py export clean-nbs docs readme

test: export test-nbs test-py

export:
	nbdev_export

# every notebook, cells flagged `slow` or `gpu` skipped (settings.ini: tst_flags)
test-nbs:
	nbdev_test --n_workers 2 --timing

# pytest last: its closing line is the suite's verdict
test-py:
	python -m pytest -q -m "not slow" tests

clean-nbs:
	nbdev_clean

docs:
	python tools/docs.py

readme:
	python tools/readme.py
