"""hlo_stats: kernels, HBM traffic and collectives read from optimised HLO text, with loops run
their trip count times; checked on a hand-written program whose figures are counted here."""

import pytest

from lct_flax import hlo_stats

# An entry computation with a fusion, an all-reduce and a while loop (3 trips) whose body runs a
# fusion and an all-gather; bookkeeping (parameters, bitcasts, tuples) launches nothing.
PROGRAM = """HloModule jit_step, is_scheduled=true

%fused_add (param_0: f32[8,128]) -> f32[8,128] {
  %param_0 = f32[8,128]{1,0} parameter(0)
  ROOT %add = f32[8,128]{1,0} add(%param_0, %param_0)
}

%body (state: (s32[], f32[8,128])) -> (s32[], f32[8,128]) {
  %state = (s32[], f32[8,128]{1,0}) parameter(0)
  %x = f32[8,128]{1,0} get-tuple-element(%state), index=1
  %i = s32[] get-tuple-element(%state), index=0
  %loop_fusion = f32[8,128]{1,0} fusion(%x), kind=kLoop, calls=%fused_add
  %all-gather = f32[64,128]{1,0} all-gather(%loop_fusion), channel_id=2, dimensions={0}
  ROOT %next = (s32[], f32[8,128]{1,0}) tuple(%i, %loop_fusion)
}

%condition (state: (s32[], f32[8,128])) -> pred[] {
  %state = (s32[], f32[8,128]{1,0}) parameter(0)
  %i = s32[] get-tuple-element(%state), index=0
  %three = s32[] constant(3)
  ROOT %less = pred[] compare(%i, %three), direction=LT
}

ENTRY %main (p: bf16[8,128], q: f32[8,128]) -> f32[8,128] {
  %p = bf16[8,128]{1,0} parameter(0)
  %q = f32[8,128]{1,0} parameter(1)
  %b = bf16[1024]{0} bitcast(%p)
  %convert_fusion = f32[8,128]{1,0} fusion(%p), kind=kLoop, calls=%fused_add
  %all-reduce = f32[8,128]{1,0} all-reduce(%convert_fusion), channel_id=1, to_apply=%fused_add
  %zero = s32[] constant(0)
  %start = (s32[], f32[8,128]{1,0}) tuple(%zero, %all-reduce)
  %loop = (s32[], f32[8,128]{1,0}) while(%start), condition=%condition, body=%body, TRIPS
  ROOT %out = f32[8,128]{1,0} get-tuple-element(%loop), index=1
}
""".replace("TRIPS", 'backend_config={"known_trip_count":{"n":"3"}}')

F32 = 8 * 128 * 4   # bytes of an f32[8,128]


def test_kernels_traffic_and_collectives_of_a_program_with_a_loop():
  stats = hlo_stats.stats(PROGRAM)
  # Entry: the fusion and the all-reduce; the loop body: a fusion and an all-gather, 3 times.
  assert stats.kernels == 2 + 3 * 2
  entry = (F32 // 2 + F32) + (F32 + F32)               # bf16 in, f32 out; f32 in, f32 out
  body = (F32 + F32) + (F32 + 8 * F32)                 # the gather writes 8 shards
  assert stats.traffic_bytes == pytest.approx(entry + 3 * body)
  assert stats.collectives == {"all-reduce": (1, F32), "all-gather": (3, 3 * 8 * F32)}


# A kernel that slices two gradients out of an all-reduce's combined buffer, and a loop's kernel
# that writes one row of its output in place per trip.
SLICING_PROGRAM = """HloModule jit_step, is_scheduled=true

%wrapped_slice (param_0: f32[1024]) -> (f32[16], f32[32]) {
  %param_0 = f32[1024]{0} parameter(0)
  %first = f32[16]{0} slice(%param_0), slice={[0:16]}
  %flat = f32[8,128]{1,0} bitcast(%param_0)
  %second = f32[1,32]{1,0} slice(%flat), slice={[0:1], [0:32]}
  %row = f32[32]{0} bitcast(%second)
  ROOT %both = (f32[16]{0}, f32[32]{0}) tuple(%first, %row)
}

%fused_update (param_0: f32[8,128], param_1: f32[128], param_2: s32[]) -> f32[8,128] {
  %param_0 = f32[8,128]{1,0} parameter(0)
  %param_1 = f32[128]{0} parameter(1)
  %param_2 = s32[] parameter(2)
  %row = f32[1,128]{1,0} bitcast(%param_1)
  %zero = s32[] constant(0)
  ROOT %update = f32[8,128]{1,0} dynamic-update-slice(%param_0, %row, %param_2, %zero)
}

ENTRY %main (g: f32[1024], out: f32[8,128], row: f32[128], i: s32[]) -> f32[8,128] {
  %g = f32[1024]{0} parameter(0)
  %out = f32[8,128]{1,0} parameter(1)
  %row = f32[128]{0} parameter(2)
  %i = s32[] parameter(3)
  %slices = (f32[16]{0}, f32[32]{0}) fusion(%g), kind=kLoop, calls=%wrapped_slice
  ROOT %written = f32[8,128]{1,0} fusion(%out, %row, %i), kind=kLoop, calls=%fused_update
}
"""


def test_a_sliced_operand_is_read_as_its_slices_and_an_in_place_update_as_the_update():
  stats = hlo_stats.stats(SLICING_PROGRAM)
  assert stats.kernels == 2
  slices = 2 * (16 + 32) * 4                     # the slices read, then written
  update = 128 * 4 + 4 + 128 * 4                 # the row and the index read, the row written
  assert stats.traffic_bytes == pytest.approx(slices + update)


def test_shape_bytes_of_arrays_and_tuples():
  assert hlo_stats.shape_bytes("bf16[8,1024]{1,0}") == 8 * 1024 * 2
  assert hlo_stats.shape_bytes("(s32[], f32[2,3]{1,0}, pred[4])") == 4 + 24 + 4
  assert hlo_stats.shape_bytes("f32[]") == 4


def test_a_text_without_an_entry_computation_is_refused():
  with pytest.raises(ValueError, match="no ENTRY computation"):
    hlo_stats.stats("%f (x: f32[]) -> f32[] {\n  ROOT %x = f32[] parameter(0)\n}\n")
