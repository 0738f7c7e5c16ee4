;; Plugin API 0.2 component of a world that exports only `lifecycle` (no hook): loading it
;; must fail with an error that says what it does export.
;; wit: v0.2
;; edit: export authorize; => // (no hook)
(module
  (memory (export "memory") 1)
  (global $bump (mut i32) (i32.const 1024))
  (func $realloc (export "cabi_realloc") (param $old i32) (param $old_size i32) (param $align i32) (param $new_size i32) (result i32)
    (local $p i32)
    (local.set $p (i32.and (i32.add (global.get $bump) (i32.sub (local.get $align) (i32.const 1)))
                           (i32.xor (i32.sub (local.get $align) (i32.const 1)) (i32.const -1))))
    (global.set $bump (i32.add (local.get $p) (local.get $new_size)))
    (local.get $p))
  (func (export "mqtt-broker:plugin/lifecycle@0.2.0#init") (param i32 i32) (result i32)
    (i64.store (i32.const 16) (i64.const 0))
    (i32.store (i32.const 24) (i32.const 0))
    (i32.const 16))
)
