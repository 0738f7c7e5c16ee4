;; Built against mqtt-broker:plugin@0.3.0, a version the broker does not speak: must be refused.
;; Core module of a test plugin for the `authorizer` world; tests/wasm/build.sh wraps it into
;; the component tests/wasm/allow.wat.
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
  (func (export "mqtt-broker:plugin/lifecycle@0.3.0#init") (param i32 i32) (result i32)
    (global.set $bump (i32.const 1024))
    (i64.store (i32.const 16) (i64.const 0))
    (i32.store (i32.const 24) (i32.const 0))
    (i32.const 16))
  ;; authorize(client, request) -> decision. The 18 flat parameters exceed the canonical ABI's
  ;; limit of 16, so they arrive in memory behind one pointer. Decision: 0 allow, 1 deny.
  (func (export "mqtt-broker:plugin/authorize@0.3.0#authorize") (param $args i32) (result i32)
    (global.set $bump (i32.const 1024))
    (i32.const 0))
)
