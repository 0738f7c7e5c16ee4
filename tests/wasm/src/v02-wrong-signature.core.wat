;; Plugin API 0.2 component whose `authorize` forgot the client parameter: loading it must
;; fail with an error naming the export and the type the broker calls it with.
;; wit: v0.2
;; edit: authorize: func(client: borrow<client>, request: acl-request) -> decision; => authorize: func(request: acl-request) -> decision;
(module
  (memory (export "memory") 1)
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
  (func (export "mqtt-broker:plugin/lifecycle@0.2.0#init") (param i32 i32) (result i32)
    (global.set $bump (i32.const 1024))
    (i64.store (i32.const 16) (i64.const 0))
    (i32.store (i32.const 24) (i32.const 0))
    (i32.const 16))
  ;; authorize(request): action, topic (pointer, length), qos, retain.
  (func (export "mqtt-broker:plugin/authorize@0.2.0#authorize") (param i32 i32 i32 i32 i32) (result i32)
    (global.set $bump (i32.const 1024))
    (i32.const 0))
)
