# Sourced by the experiment scripts. Sets BIN to the ttlora binary to run: $BIN when given (a
# prebuilt copy, so rebuilding the project while a long script runs cannot change the binary
# under it), else a fresh release build.
if [[ -z ${BIN:-} ]]; then
  cargo build --release --quiet
  BIN=target/release/ttlora
fi

# Sets `args` to the flags that choose method $1 in the SuperGLUE scripts: LoRA and
# LoRETTA-rep at r = 8, the paper's comparison rank (LoRA's default too).
method_args() {
  args=(--method "$1")
  if [[ $1 == lora || $1 == loretta-rep ]]; then args+=(--rank 8); fi
}

# Sets `extra` to the training-set size and epochs every GLUE table uses for task $1. SST-2 has
# 67k training sentences: one epoch over a seeded 20k sample keeps a run near 5 minutes on 2
# cores. The small tasks train on their full split for 3 epochs.
task_args() {
  case $1 in
    sst2) extra=(--max-train 20000 --epochs 1) ;;
    *) extra=(--epochs 3) ;;
  esac
}
