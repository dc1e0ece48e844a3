"""What a compiled program does per device, read from its optimised HLO text: the kernels it
launches, the bytes they move through device memory, and its collectives. Pure text functions.

A device runs the entry computation's instructions in order; a `while` runs its body
`known_trip_count` times (XLA writes the count into the loop's backend config when it is
static, as every loop of these steps is) and `call` / `conditional` run their computations.
Every other instruction that is not bookkeeping (parameter, constant, bitcast, tuple,
get-tuple-element, ...) is one kernel (a fusion, a library call, a copy, a collective) that reads
its operands and writes its result: the sum of those bytes estimates its HBM traffic (an upper
bound where a GPU's L2 keeps an operand; XLA's fusions already keep what they fuse on chip).
Two exceptions, as the kernels run: an operand that a kernel only slices is read as its slices
(a gradient sliced out of the combined buffer of an all-reduce), and a buffer that a kernel
updates in place (a dynamic-update-slice of one of its operands: a loop writing its output chunk
by chunk) is neither read nor written beyond the update.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Iterator

DTYPE_BYTES = {"pred": 1, "s4": 0.5, "u4": 0.5, "s8": 1, "u8": 1, "f8e4m3fn": 1, "f8e5m2": 1,
               "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4, "u32": 4, "f32": 4, "s64": 8,
               "u64": 8, "f64": 8, "c64": 8, "c128": 16}
BOOKKEEPING = {"parameter", "constant", "bitcast", "tuple", "get-tuple-element", "after-all",
               "opt-barrier", "partition-id", "replica-id", "add-dependency", "domain",
               "all-reduce-done", "all-gather-done", "collective-permute-done", "copy-done",
               "async-done", "send-done", "recv-done"}
COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "collective-permute", "all-to-all",
               "ragged-all-to-all")
CONTROL = {"while", "call", "conditional"}

_COMPUTATION = re.compile(r"^(ENTRY )?%(\S+) .*\{$")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%(\S+) = (.+?) ([a-z][a-z0-9-]*)\((.*)$")
_SHAPE = re.compile(r"\b([a-z]+[0-9]*[a-z0-9]*)\[([0-9,]*)\]")
_OPERAND = re.compile(r"%([\w.\-]+)")
_TRIP_COUNT = re.compile(r'"known_trip_count":\{"n":"(\d+)"\}')
_CALLED = re.compile(r"\b(?:body|to_apply|calls|branch_computations|true_computation|"
                     r"false_computation)=\{?%?([\w.\-]+(?:, ?%[\w.\-]+)*)\}?")


@dataclasses.dataclass
class Instruction:
  name: str
  opcode: str
  result_bytes: float
  operands: list[str]
  called: list[str]
  trip_count: int
  parameter_number: int = -1


@dataclasses.dataclass
class Stats:
  """Per device, for one execution of the program."""
  kernels: int = 0
  traffic_bytes: float = 0.0
  collectives: dict = dataclasses.field(default_factory=dict)   # opcode -> (count, bytes)


def shape_bytes(shape_text: str) -> float:
  """Bytes of a result type: an array `bf16[8,1024]{1,0}` or a tuple of them."""
  total = 0.0
  for dtype, dims in _SHAPE.findall(shape_text):
    if dtype not in DTYPE_BYTES:
      continue
    count = 1
    for dim in filter(None, dims.split(",")):
      count *= int(dim)
    total += count * DTYPE_BYTES[dtype]
  return total


def parse(hlo_text: str) -> tuple[dict[str, list[Instruction]], str]:
  """(computation name -> its instructions, the entry computation's name)."""
  computations, entry, current = {}, None, None
  for line in hlo_text.splitlines():
    header = _COMPUTATION.match(line)
    if header:
      current = computations.setdefault(header.group(2), [])
      entry = header.group(2) if header.group(1) else entry
      continue
    match = _INSTRUCTION.match(line) if current is not None else None
    if match:
      name, shape, opcode, rest = match.groups()
      arguments = rest.split("), ", 1)[0]
      called = [c.strip().lstrip("%") for group in _CALLED.findall(rest)
                for c in group.split(",")]
      trip = _TRIP_COUNT.search(rest)
      number = int(arguments.rstrip(")")) if opcode == "parameter" else -1
      current.append(Instruction(name, opcode, shape_bytes(shape), _OPERAND.findall(arguments),
                                 called, int(trip.group(1)) if trip else 1, number))
  if entry is None:
    raise ValueError("no ENTRY computation in the HLO text.")
  return computations, entry


def _executed(computations: dict, name: str, times: int) -> Iterator[tuple[Instruction, int, dict]]:
  """(instruction, how often it runs, its computation's sizes by name), control flow unrolled."""
  sizes = {i.name: i.result_bytes for i in computations[name]}
  for instruction in computations[name]:
    if instruction.opcode == "while":   # `called` holds its body (the condition is tiny)
      yield from _executed(computations, instruction.called[0], times * instruction.trip_count)
    elif instruction.opcode in ("call", "conditional"):
      for called in instruction.called[:1]:
        yield from _executed(computations, called, times)
    else:
      yield instruction, times, sizes


def _through_bitcasts(instructions: list[Instruction], name: str) -> list[tuple[Instruction, int]]:
  """(user, operand position) of every use of `name`, looking through bitcasts."""
  uses = []
  for user in instructions:
    for position, operand in enumerate(user.operands):
      if operand == name:
        uses.extend(_through_bitcasts(instructions, user.name) if user.opcode == "bitcast"
                    else [(user, position)])
  return uses


def _in_place(by_name: dict[str, Instruction], update: Instruction) -> bool:
  """Whether `update` (a dynamic-update-slice) updates one of its computation's parameters;
  `by_name` holds that computation's instructions."""
  buffer = by_name.get(update.operands[0])
  while buffer is not None and buffer.opcode == "bitcast":
    buffer = by_name.get(buffer.operands[0])
  return buffer is not None and buffer.opcode == "parameter"


def _moved(computations: dict, instruction: Instruction, sizes: dict) -> float:
  """Bytes `instruction` reads and writes (the module docstring's two exceptions applied)."""
  fused = (computations.get(instruction.called[0], [])
           if instruction.opcode == "fusion" and instruction.called else [])
  by_name = {i.name: i for i in fused}
  sliced = {}
  for parameter in (i for i in fused if i.opcode == "parameter"):
    uses = _through_bitcasts(fused, parameter.name)
    if uses and all(u.opcode in ("slice", "dynamic-slice") and p == 0 for u, p in uses):
      sliced[parameter.parameter_number] = sum(u.result_bytes for u, _ in uses)
    elif uses and all(u.opcode == "dynamic-update-slice" and p == 0 and _in_place(by_name, u)
                      for u, p in uses):
      sliced[parameter.parameter_number] = 0.0
  reads = sum(sliced.get(k, sizes.get(o, 0.0)) for k, o in enumerate(instruction.operands))
  root = fused[-1] if fused else None
  outputs = ([by_name.get(o) for o in root.operands] if root and root.opcode == "tuple"
             else [root])
  writes = instruction.result_bytes
  for output in outputs:
    if (output is not None and output.opcode == "dynamic-update-slice"
        and _in_place(by_name, output)):
      writes -= output.result_bytes - by_name[output.operands[1]].result_bytes
  return reads + writes


def stats(hlo_text: str) -> Stats:
  """Kernels, estimated HBM traffic and collectives of one run of a compiled program."""
  computations, entry = parse(hlo_text)
  result = Stats()
  for instruction, times, sizes in _executed(computations, entry, 1):
    opcode = instruction.opcode.removesuffix("-start")
    if instruction.opcode in BOOKKEEPING:
      continue
    moved = _moved(computations, instruction, sizes)
    result.kernels += times
    result.traffic_bytes += times * moved
    if opcode in COLLECTIVES:
      count, size = result.collectives.get(opcode, (0, 0.0))
      result.collectives[opcode] = (count + times, size + times * instruction.result_bytes)
  return result
