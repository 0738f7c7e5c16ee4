;; Hostile: authorize grows memory without bound for topics starting with "bad", ignoring failures (must hit the memory limit).
;; Core module of a test plugin for the `authorizer` world; tests/wasm/build.sh wraps it into
;; the component tests/wasm/grow.wat.
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
  ;; Whether the request's topic starts with "bad": only those calls misbehave, so that the
  ;; tests can run well-behaved traffic through the same plugin alongside. Parameter layout
  ;; (canonical ABI): client-info takes bytes 0..48, acl-request starts at 48 with the
  ;; topic's pointer at 52 and length at 56.
  (func $is_bad (param $args i32) (result i32)
    (local $ptr i32)
    (if (i32.lt_u (i32.load (i32.add (local.get $args) (i32.const 56))) (i32.const 3))
      (then (return (i32.const 0))))
    (local.set $ptr (i32.load (i32.add (local.get $args) (i32.const 52))))
    (i32.and
      (i32.and (i32.eq (i32.load8_u (local.get $ptr)) (i32.const 98))
               (i32.eq (i32.load8_u offset=1 (local.get $ptr)) (i32.const 97)))
      (i32.eq (i32.load8_u offset=2 (local.get $ptr)) (i32.const 100))))
  ;; authorize(client, request) -> decision. The 18 flat parameters exceed the canonical ABI's
  ;; limit of 16, so they arrive in memory behind one pointer. Decision: 0 allow, 1 deny.
  (func (export "mqtt-broker:plugin/authorize@0.1.0#authorize") (param $args i32) (result i32)
    (if (call $is_bad (local.get $args))
      (then
        (loop $more
          (drop (memory.grow (i32.const 16)))
          (br $more))))
    (global.set $bump (i32.const 1024))
    (i32.const 0))
)
