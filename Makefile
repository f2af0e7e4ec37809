# Haven: two commands on a fresh Debian machine.
.PHONY: start test setup build lint bench clean

setup:
	scripts/setup

build:
	npx tsc -p tsconfig.json
	node scripts/build-cli.mjs
	node scripts/build-console.mjs

start: setup
	scripts/start

test: setup
	npm run lint --silent
	npm test --silent

lint:
	npm run lint --silent

bench: setup
	npm run bench --silent

clean:
	rm -rf dist build .cache bench-results test-results
