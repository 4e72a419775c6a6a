//! Byte-level tests: each opcode, Python's own output, and every error path with its exact
//! message and offset.

mod proptests;

use super::load;
use super::value::{MAX_DEPTH, Value};
use std::rc::Rc;

fn decode(bytes: &[u8]) -> Value {
    load(bytes, &[]).unwrap_or_else(|e| panic!("{e}"))
}

fn error(bytes: &[u8]) -> String {
    match load(bytes, &[]) {
        Ok(v) => panic!("decoded {v:?}"),
        Err(e) => e.to_string(),
    }
}

fn int(i: i64) -> Value {
    Value::Int(i)
}

fn s(text: &str) -> Value {
    Value::Str(text.into())
}

fn bytes(b: &[u8]) -> Value {
    Value::Bytes(b.into())
}

fn items(v: &Value) -> &[Value] {
    match v {
        Value::List(l) | Value::Tuple(l) => &l.items,
        other => panic!("not a sequence: {other:?}"),
    }
}

#[test]
fn scalars_and_tuples_written_by_python_3_11() {
    // pickle.dumps([1.5, -2, 300, 70000, 2**40, -2**63, 2**64, 'a', b'xy', (), (1,), (1,2),
    //               (1,2,3), (1,2,3,4), True, False, None], protocol=4)
    let v = decode(
        b"\x80\x04\x95b\x00\x00\x00\x00\x00\x00\x00]\x94(G?\xf8\x00\x00\x00\x00\x00\x00J\xfe\
          \xff\xff\xffM,\x01Jp\x11\x01\x00\x8a\x06\x00\x00\x00\x00\x00\x01\x8a\x08\x00\x00\
          \x00\x00\x00\x00\x00\x80\x8a\t\x00\x00\x00\x00\x00\x00\x00\x00\x01\x8c\x01a\x94C\
          \x02xy\x94)K\x01\x85\x94K\x01K\x02\x86\x94K\x01K\x02K\x03\x87\x94(K\x01K\x02K\x03K\
          \x04t\x94\x88\x89Ne.",
    );
    let it = items(&v);
    assert_eq!(it.len(), 17);
    assert_eq!(it[0], Value::Float(1.5));
    let ints = [int(-2), int(300), int(70000), int(1 << 40), int(i64::MIN)];
    assert_eq!(&it[1..6], &ints);
    assert_eq!(it[6], Value::BigInt(vec![0, 0, 0, 0, 0, 0, 0, 0, 1].into()));
    assert_eq!(&it[7..9], &[s("a"), bytes(b"xy")]);
    let tuple_lens: Vec<usize> = it[9..14].iter().map(|t| items(t).len()).collect();
    assert_eq!(tuple_lens, [0, 1, 2, 3, 4]);
    assert_eq!(items(&it[13])[3], int(4));
    assert_eq!(
        &it[14..],
        &[Value::Bool(true), Value::Bool(false), Value::None]
    );
}

#[test]
fn a_memo_reference_to_a_finished_dict_is_the_same_object() {
    // x = {}; pickle.dumps([x, x], protocol=4): the second x is a BINGET while the first is
    // still on the stack, waiting for APPENDS.
    let v = decode(b"\x80\x04\x95\t\x00\x00\x00\x00\x00\x00\x00]\x94(}\x94h\x01e.");
    let [Value::Dict(a), Value::Dict(b)] = items(&v) else {
        panic!("{v:?}")
    };
    assert!(Rc::ptr_eq(a, b));
}

#[test]
fn protocol_2_memo_and_the_long_length_forms() {
    let mut p = b"\x80\x02]q\x00(".to_vec(); // EMPTY_LIST, BINPUT 0, MARK
    p.extend(b"X\x02\x00\x00\x00ab"); // BINUNICODE 'ab'
    p.extend(b"r\x07\x00\x00\x00h\x07j\x07\x00\x00\x00"); // LONG_BINPUT 7, BINGET, LONG_BINGET
    p.extend(b"\x8d\x01\x00\x00\x00\x00\x00\x00\x00c"); // BINUNICODE8 'c'
    p.extend(b"B\x01\x00\x00\x00b"); // BINBYTES
    p.extend(b"\x8e\x01\x00\x00\x00\x00\x00\x00\x00d"); // BINBYTES8
    p.extend(b"\x96\x00\x00\x00\x00\x00\x00\x00\x00"); // BYTEARRAY8 (empty)
    p.extend(b"\x8b\x02\x00\x00\x00\xff\x7fM\xff\xff"); // LONG4 32767, BININT2 65535
    p.extend(b"\x8a\x00e."); // LONG1 0, APPENDS, STOP
    let v = decode(&p);
    let it = items(&v);
    let want = [
        s("ab"),
        s("ab"),
        s("ab"),
        s("c"),
        bytes(b"b"),
        bytes(b"d"),
        bytes(b""),
        int(32767),
        int(65535),
        int(0),
    ];
    assert_eq!(it, &want);
    let (Value::Str(a), Value::Str(c)) = (&it[0], &it[2]) else {
        unreachable!()
    };
    assert!(Rc::ptr_eq(a, c), "memo references share the string");
}

#[test]
fn mark_based_constructors_and_single_item_mutators() {
    // MARK 1 2 LIST; MARK 'k' 3 DICT; then APPEND 4 to the list, SETITEM 'j' 5 in the dict;
    // MARK 6 7 8 9 TUPLE; TUPLE3 of all three.
    let p = b"\x80\x03(K\x01K\x02lK\x04a(\x8c\x01kK\x03d\x8c\x01jK\x05s(K\x06K\x07K\x08K\tt\x87.";
    let v = decode(p);
    let [list, Value::Dict(dict), tuple] = items(&v) else {
        panic!("{v:?}")
    };
    assert_eq!(items(list), &[int(1), int(2), int(4)]);
    assert_eq!(dict.entries, vec![(s("k"), int(3)), (s("j"), int(5))]);
    assert_eq!(dict.get("j"), Some(&int(5)));
    assert_eq!(items(tuple), &[int(6), int(7), int(8), int(9)]);
}

#[test]
fn stack_opcodes_pop_pop_mark_dup_and_text_memo() {
    // 1 POP; MARK 2 3 POP_MARK; MARK POP (pops the empty mark); 'x' PUT 12 POP GET 12;
    // 4 DUP TUPLE3 -> ('x', 4, 4). FRAME in the middle is skipped.
    let mut p = b"\x80\x05K\x010(K\x02K\x031(0".to_vec();
    p.extend(b"\x95\x01\x00\x00\x00\x00\x00\x00\x00");
    p.extend(b"\x8c\x01xp12\n0g12\nK\x042\x87.");
    assert_eq!(items(&decode(&p)), &[s("x"), int(4), int(4)]);
}

#[test]
fn a_later_key_overrides_an_earlier_one() {
    let v = decode(b"\x80\x04}(\x8c\x01aK\x01\x8c\x01aK\x02u.");
    let Value::Dict(d) = v else { panic!() };
    assert_eq!(d.get("a"), Some(&int(2)));
}

#[test]
fn invalid_utf8_is_replaced_not_rejected() {
    // Python pickles the lone surrogate '\udcff' (from an undecodable file name) like this.
    assert_eq!(
        decode(b"\x80\x04\x8c\x03\xed\xb3\xbf."),
        s("\u{fffd}\u{fffd}\u{fffd}")
    );
}

#[test]
fn dup_of_an_open_list_shares_it() {
    // EMPTY_LIST DUP TUPLE2: two references to one (closed) list.
    let v = decode(b"\x80\x04]2\x86.");
    let [Value::List(a), Value::List(b)] = items(&v) else {
        panic!()
    };
    assert!(Rc::ptr_eq(a, b));
}

#[test]
fn truncation_names_the_opcode_and_its_offset() {
    assert_eq!(
        error(b"\x80\x04\x8c\x05ab"),
        "pickle byte 2: input ends inside the argument of SHORT_BINUNICODE"
    );
    assert_eq!(
        error(b"\x80\x04J\x01\x02"),
        "pickle byte 2: input ends inside the argument of BININT"
    );
    assert_eq!(error(b"\x80\x04N"), "pickle byte 3: input ends before STOP");
    assert_eq!(error(b""), "pickle byte 0: input ends before STOP");
    assert_eq!(
        error(b"\x80"),
        "pickle byte 0: input ends inside the argument of PROTO"
    );
}

#[test]
fn a_huge_declared_length_is_truncation_not_an_allocation() {
    assert_eq!(
        error(b"\x80\x04\x8d\xff\xff\xff\xff\xff\xff\xff\x7fabc"),
        "pickle byte 2: input ends inside the argument of BINUNICODE8"
    );
    assert_eq!(
        error(b"\x80\x04\x8b\xff\xff\xff\xffabc"),
        "pickle byte 2: LONG4 with negative length -1"
    );
}

#[test]
fn unknown_and_unsupported_opcodes() {
    assert_eq!(error(b"\x80\x04\xff"), "pickle byte 2: unknown opcode 0xff");
    assert_eq!(
        error(b"\x80\x04N\x8f."),
        "pickle byte 3: unsupported opcode EMPTY_SET (0x8f); only dict, list, tuple, str, \
         bytes, int, float, bool and None at protocols 2-5 are read"
    );
    assert_eq!(
        error(b"\x80\x06N."),
        "pickle byte 0: unsupported pickle protocol 6 (this reader knows 0-5)"
    );
}

#[test]
fn code_executing_opcodes_are_refused() {
    let why = "would import or call Python code; refused (a memory snapshot holds only plain data)";
    assert_eq!(
        error(b"\x80\x02cos\nsystem\n"),
        format!("pickle byte 2: opcode GLOBAL (0x63) {why}")
    );
    assert_eq!(
        error(b"\x80\x04\x8c\x02os\x8c\x06system\x93"),
        format!("pickle byte 14: opcode STACK_GLOBAL (0x93) {why}")
    );
    assert_eq!(
        error(b"\x80\x04N)R."),
        format!("pickle byte 4: opcode REDUCE (0x52) {why}")
    );
    for (op, name) in [(b'b', "BUILD"), (0x81, "NEWOBJ"), (b'Q', "BINPERSID")] {
        assert_eq!(
            error(&[0x80, 4, b'N', op]),
            format!("pickle byte 3: opcode {name} ({op:#04x}) {why}")
        );
    }
}

#[test]
fn memo_errors() {
    assert_eq!(
        error(b"\x80\x04h\x05."),
        "pickle byte 2: memo index 5 was never stored"
    );
    assert_eq!(
        error(b"\x80\x04N\x94j\x01\x00\x00\x00."),
        "pickle byte 4: memo index 1 was never stored"
    );
    assert_eq!(
        error(b"\x80\x04g1x\n."),
        "pickle byte 2: GET argument \"1x\" is not a memo index"
    );
    assert_eq!(
        error(b"\x80\x04Np12345678901234567\n."),
        "pickle byte 3: PUT argument is longer than 16 bytes"
    );
    assert_eq!(
        error(b"\x80\x04\x94."),
        "pickle byte 2: MEMOIZE needs more items than the stack holds (stack underflow)"
    );
}

#[test]
fn a_huge_memo_index_costs_one_entry() {
    let v = decode(b"\x80\x04K\x07r\xff\xff\xff\xff0j\xff\xff\xff\xff.");
    assert_eq!(v, int(7));
}

#[test]
fn stack_and_mark_errors() {
    let underflow = "needs more items than the stack holds (stack underflow)";
    assert_eq!(
        error(b"\x80\x04."),
        format!("pickle byte 2: STOP {underflow}")
    );
    assert_eq!(
        error(b"\x80\x04a."),
        format!("pickle byte 2: APPEND {underflow}")
    );
    assert_eq!(
        error(b"\x80\x04]a."),
        "pickle byte 3: APPEND has no list to add to (stack underflow)"
    );
    assert_eq!(
        error(b"\x80\x04(."),
        format!("pickle byte 3: STOP {underflow}")
    );
    assert_eq!(
        error(b"\x80\x04K\x01\x86."),
        format!("pickle byte 4: TUPLE2 {underflow}")
    );
    assert_eq!(
        error(b"\x80\x042"),
        format!("pickle byte 2: DUP {underflow}")
    );
    assert_eq!(
        error(b"\x80\x040"),
        format!("pickle byte 2: POP {underflow}")
    );
    assert_eq!(
        error(b"\x80\x04]K\x01e."),
        "pickle byte 5: APPENDS without a preceding MARK"
    );
    assert_eq!(
        error(b"\x80\x041"),
        "pickle byte 2: POP_MARK without a preceding MARK"
    );
    assert_eq!(
        error(b"\x80\x04(K\x01e."),
        "pickle byte 5: APPENDS has no list to add to (stack underflow)"
    );
}

#[test]
fn container_type_errors() {
    assert_eq!(
        error(b"\x80\x04}(K\x01u."),
        "pickle byte 6: SETITEMS needs key/value pairs but has 1 items"
    );
    assert_eq!(
        error(b"\x80\x04}K\x01a."),
        "pickle byte 5: APPEND target is a dict, expected a list"
    );
    assert_eq!(
        error(b"\x80\x04]K\x01K\x02s."),
        "pickle byte 7: SETITEM target is a list, expected a dict"
    );
    assert_eq!(
        error(b"\x80\x04K\x01K\x01K\x02s."),
        "pickle byte 8: SETITEM target is an int, expected a dict"
    );
    assert_eq!(
        error(b"\x80\x04}]K\x01s."),
        "pickle byte 6: SETITEM: dict key is a list (unhashable)"
    );
}

#[test]
fn a_recursive_list_is_an_error_not_a_cycle() {
    // l = []; l.append(l); pickle.dumps(l, protocol=4)
    assert_eq!(
        error(b"\x80\x04\x95\x06\x00\x00\x00\x00\x00\x00\x00]\x94h\x00a."),
        "pickle byte 15: APPEND adds to a list that was already referenced again (a \
         recursive structure, which memory snapshots never contain)"
    );
}

#[test]
fn deep_nesting_is_an_error_not_a_stack_overflow() {
    let n = 100_000;
    let mut p = vec![0x80, 4];
    p.extend(std::iter::repeat_n(b']', n));
    p.extend(std::iter::repeat_n(b'a', n - 1));
    p.push(b'.');
    let at = 2 + n + MAX_DEPTH as usize - 1;
    assert_eq!(
        error(&p),
        format!("pickle byte {at}: containers nest deeper than {MAX_DEPTH} levels")
    );
    // Exactly MAX_DEPTH levels are fine.
    let d = MAX_DEPTH as usize;
    let mut p = vec![0x80, 4];
    p.extend(std::iter::repeat_n(b']', d));
    p.extend(std::iter::repeat_n(b'a', d - 1));
    p.push(b'.');
    assert_eq!(decode(&p).depth(), MAX_DEPTH);
}

fn dict_of(v: &Value) -> &crate::pickle::Dict {
    match v {
        Value::Dict(d) => d,
        other => panic!("not a dict: {other:?}"),
    }
}

#[test]
fn skipped_keys_are_left_out_in_every_dict_form() {
    let skip = |b: &[u8]| load(b, &["frames"]).unwrap_or_else(|e| panic!("{e}"));
    // SETITEMS: {'frames': [1, 2], 'k': 3}
    let v = skip(b"\x80\x04}(\x8c\x06frames](K\x01K\x02e\x8c\x01kK\x03u.");
    assert_eq!(dict_of(&v).entries, vec![(s("k"), int(3))]);
    // SETITEM: {'frames': {1: 2}}
    let v = skip(b"\x80\x04}\x8c\x06frames}K\x01K\x02ss.");
    assert_eq!(dict_of(&v).entries, vec![]);
    // DICT: {'frames': 5}; then a 'frames' that is a list item, not a key: [{..}, 'frames', []]
    let v = skip(b"\x80\x04]((\x8c\x06framesK\x05d\x8c\x06frames]e.");
    assert_eq!(dict_of(&items(&v)[0]).entries, vec![]);
    assert_eq!(items(&v)[1], s("frames"));
    assert_eq!(items(&items(&v)[2]), &[]);
}

#[test]
fn a_skipped_value_is_none_where_referenced_again_but_its_items_are_kept() {
    // [{'frames': L}, {'frames': L}, F, L] where L = [F] is skipped and F = {1: 2} is
    // memoized inside it: F stays a dict, the later reference to L is None.
    let mut p = b"\x80\x04](}(\x8c\x06frames]\x94}\x94K\x01K\x02sau".to_vec();
    p.extend(b"}(\x8c\x06framesh\x00uh\x01h\x00e.");
    let v = load(&p[..], &["frames"]).unwrap();
    let it = items(&v);
    assert_eq!(dict_of(&it[0]).entries, vec![]);
    assert_eq!(dict_of(&it[1]).entries, vec![]);
    assert_eq!(dict_of(&it[2]).entries, vec![(int(1), int(2))]);
    assert_eq!(it[3], Value::None);
    // Without skipping, the same bytes keep L, shared.
    let v = decode(&p);
    let (Some(Value::List(a)), Some(Value::List(b))) = (
        dict_of(&items(&v)[0]).get("frames"),
        dict_of(&items(&v)[1]).get("frames"),
    ) else {
        panic!("{v:?}")
    };
    assert!(Rc::ptr_eq(a, b));
}

#[test]
fn trailing_bytes_after_stop_are_not_read() {
    assert_eq!(decode(b"\x80\x04K\x05.garbage"), int(5));
}
