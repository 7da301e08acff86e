;; A module exporting a tag, a thrower and a catcher (tests/wasm/test_wasm_eh.py: linking).
(module
  (tag $t (export "t") (param i32))
  (func (export "throw") (param i32) (throw $t (local.get 0)))
  (func (export "catch") (param i32) (param i32) (result i32)
    (block $h (result i32)
      (try_table (catch $t $h) (call_indirect (param i32) (local.get 0) (local.get 1)))
      (i32.const -1)))
  (table (export "fns") 1 funcref)
)
