#!/usr/bin/env bash
# Sharded data parallel across two "hosts" (network namespaces joined by a
# 1 Gbit/s tbf-shaped veth, one rank and one torch thread each): `kiln bench
# fsdp` compares in the same run the overlapped wrapper with gather-all ->
# forward -> backward -> reduce-all. Options as bench/ddp_overlap.sh, plus
# --stage 1|2|3 (default 3).
#   bench/fsdp_overlap.sh [--rate 1gbit] [--batch 256] [--width 2048] [--layers 4] [--stage 3] [--bf16] [--prefetch 1]
#                         [--min-unit-params N]   (units of at least N parameters: neighbouring layers merged)
#                         [--trace PATH]   (timelines of both ranks: bench/fsdp_timeline.py PATH)
exec "$(dirname "${BASH_SOURCE[0]}")/ddp_overlap.sh" --bench fsdp "$@"
