# The two commands of the README:
#   make run    the daemon on its embedded RocksDB in ./data, on 127.0.0.1:7070
#   make test   the whole test suite: format, lints, unit/integration/doc tests, examples,
#               schemathesis against a real daemon
# Both first install what the build needs (scripts/ensure-deps.sh). Tests and examples
# that need PostgreSQL or NATS JetStream start throwaway servers of their own
# (oncely-testkit): nothing assumes a server is running.

CARGO ?= cargo
ARGS ?=

.PHONY: run test deps fmt lint unit doc examples schemathesis python bench peers

run: deps
	$(CARGO) run --release --locked -p oncelyd -- serve $(ARGS)

test: deps fmt lint unit doc examples schemathesis python

deps:
	@./scripts/ensure-deps.sh

fmt:
	$(CARGO) fmt --all -- --check

lint:
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

unit:
	$(CARGO) test --workspace --locked --lib --bins --tests --examples
	$(CARGO) test --locked -p oncely --features failpoints --test failpoints

doc:
	$(CARGO) test --workspace --locked --doc

examples:
	$(CARGO) run --locked -q -p oncely-examples --example consumer
	$(CARGO) run --locked -q -p oncely-examples --example read_model
	$(CARGO) run --locked -q -p oncely-examples --example http_consumer
	$(CARGO) run --locked -q -p oncely-examples --example jetstream_read_model

# The daemon against its own OpenAPI document, every check (about 10 s once built).
schemathesis:
	./scripts/schemathesis.sh

# The Python client (clients/python): ruff, mypy --strict, pytest against a real daemon.
python:
	./scripts/python-client.sh

bench: deps
	$(CARGO) bench --locked -p oncely-benches $(ARGS)

# Oncely beside Redis and NATS JetStream on this machine (installs the peers when
# missing); writes benches/peers/RESULTS.md. ARGS="--duration 5" for a shorter run.
peers: deps
	./benches/peers/run.sh $(ARGS)
