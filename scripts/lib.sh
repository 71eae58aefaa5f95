# Sourced by the experiment scripts. Sets BIN to the ttlora binary to run: $BIN when given (a
# prebuilt copy, so rebuilding the project while a long script runs cannot change the binary
# under it), else a fresh release build.
if [[ -z ${BIN:-} ]]; then
  cargo build --release --quiet
  BIN=target/release/ttlora
fi
