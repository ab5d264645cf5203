"""The reshape arithmetic of spec inference (`spec.dims`) and its union-find (`spec.units`), on their own:
pure functions over unit variables, no model and no graph."""
import numpy as np

from modefuse.spec.dims import Atom, Cat, axis_size, common_sizes, cut, plain, positions, reshape, unify
from modefuse.spec.units import FIXED, UnitVars


def test_flattening_channels_into_features_gives_each_unit_a_block_of_positions():
    uv = UnitVars()
    c = uv.new(4)  # 4 channels of 3 x 3: a conv's output flattened into a Linear's 36 inputs
    axes = (plain(2), plain(4, c), plain(3), plain(3))
    out = reshape(uv, axes, (2, 36))
    assert out[1] == (Atom(c, 4), Atom(None, 3), Atom(None, 3))
    size, where = positions(uv, out[1], set())
    assert size == 36 and set(where) == {c}
    assert np.array_equal(where[c], np.repeat(np.arange(4), 9))  # unit u holds positions 9u .. 9u + 8


def test_splitting_a_width_into_heads_refines_the_variable_as_a_product():
    uv = UnitVars()
    v = uv.new(256)
    out = reshape(uv, (plain(2), plain(8), plain(256, v)), (2, 8, 4, 64))
    (h, _), (d, _) = out[2][0], out[3][0]
    assert uv.refined[uv.find(v)] == ("kron", (h, d)) and (uv.size[h], uv.size[d]) == (4, 64)
    back = reshape(uv, out, (2, 8, 256))  # and merging the heads back is the same units again
    _, where = positions(uv, back[2], set())
    assert set(where) == {uv.find(h), uv.find(d)}
    assert np.array_equal(where[uv.find(h)], np.repeat(np.arange(4), 64))
    assert np.array_equal(where[uv.find(d)], np.tile(np.arange(64), 4))


def test_a_view_that_cuts_across_units_fixes_them():
    uv = UnitVars()
    v = uv.new(6)
    out = reshape(uv, (plain(2), plain(6, v)), (3, 4))  # 2 x 6 read as 3 x 4: no unit stays whole
    assert [axis_size(a) for a in out] == [3, 4]
    assert uv.find(v) == FIXED


def test_cut_and_common_sizes():
    uv = UnitVars()
    assert common_sizes(plain(4) + plain(6), plain(8) + plain(3)) == [4, 2, 3]
    assert common_sizes(plain(4), plain(6)) is None
    a = uv.new(12)
    parts = cut(uv, plain(12, a), (3, 4))
    assert [axis_size(p) for p in parts] == [3, 4] and uv.refined[uv.find(a)].kind == "kron"
    assert cut(uv, plain(5), (2, 3)) is None


def test_unify_joins_units_and_fixes_what_meets_no_units():
    uv = UnitVars()
    a, b, c = uv.new(8), uv.new(8), uv.new(8)
    assert unify(uv, plain(8, a), plain(8, b)) and uv.find(a) == uv.find(b)
    assert unify(uv, plain(8, c), plain(8))  # a residual added to an input: those units cannot move
    assert uv.find(c) == FIXED and uv.find(a) != FIXED
    assert not unify(uv, plain(8, a), plain(4, uv.new(4)))  # sizes differ: the caller names the node


def test_a_layer_reading_a_concatenation_splits_its_input_units():
    uv = UnitVars()
    x, y, w = uv.new(3), uv.new(5), uv.new(8)
    cat = (Cat(((Atom(x, 3),), (Atom(y, 5),))),)
    assert unify(uv, cat, plain(8, w))
    kind, parts = uv.refined[uv.find(w)]
    assert kind == "cat" and {uv.find(p) for p in parts} == {uv.find(x), uv.find(y)}


def test_union_find_joins_by_size_and_fixing_spreads_to_parts():
    uv = UnitVars()
    a, b, c = uv.new(6), uv.new(6), uv.new(4)
    assert uv.union(a, b) and not uv.union(a, c)
    parts = uv.refine(a, "kron", (2, 3))
    assert uv.refine(b, "kron", (2, 3)) == parts  # the class shares one refinement
    uv.fix(b)
    assert uv.find(a) == FIXED and all(uv.find(p) == FIXED for p in parts)
    assert uv.refine(a, "kron", (2, 3)) is None
