;; world: transformer
;; Keeps every message unchanged: the cheapest possible transform, for benchmarks.
;; Core module of a test plugin for the `transformer` world; tests/wasm/build.sh wraps it into
;; the component tests/wasm/keep.wat.
(module
  (memory (export "memory") 1)
  ;; Bump allocator for the canonical ABI; reset after every call.
  (global $bump (mut i32) (i32.const 1024))
  (func $realloc (export "cabi_realloc") (param $old i32) (param $old_size i32) (param $align i32) (param $new_size i32) (result i32)
    (local $p i32)
    (local.set $p (i32.and (i32.add (global.get $bump) (i32.sub (local.get $align) (i32.const 1)))
                           (i32.xor (i32.sub (local.get $align) (i32.const 1)) (i32.const -1))))
    (global.set $bump (i32.add (local.get $p) (local.get $new_size)))
    (block $ok
      (loop $grow
        (br_if $ok (i32.le_u (global.get $bump) (i32.mul (memory.size) (i32.const 65536))))
        (if (i32.eq (memory.grow (i32.const 1)) (i32.const -1)) (then unreachable))
        (br $grow)))
    (local.get $p))
  ;; init(config) -> result<_, string>: returns a pointer to a zeroed result (ok).
  (func (export "mqtt-broker:plugin/lifecycle@0.1.0#init") (param i32 i32) (result i32)
    (global.set $bump (i32.const 1024))
    (i64.store (i32.const 16) (i64.const 0))
    (i32.store (i32.const 24) (i32.const 0))
    (i32.const 16))
  ;; transform(client, message) -> transform-result. Parameters arrive behind one pointer (19
  ;; flat values exceed 16); the 32-byte result is returned by pointer: all zeroes means
  ;; action `keep` (discriminant 0) and an empty `additional` list.
  (func (export "mqtt-broker:plugin/transform@0.1.0#transform") (param $args i32) (result i32)
    (global.set $bump (i32.const 1024))
    (i64.store (i32.const 32) (i64.const 0))
    (i64.store (i32.const 40) (i64.const 0))
    (i64.store (i32.const 48) (i64.const 0))
    (i64.store (i32.const 56) (i64.const 0))
    (i32.const 32))
)
