;; The warm-up component: run once by every sandbox after hardening and before it reports ready,
;; so the first real execution does not pay for the process's cold start (first-touch page
;; faults in Wasmtime's code and data, the signal stack, the runtime). Trusted, built into the
;; binary, never tenant code.
(component
  (core module $m
    (memory (export "memory") 1)
    (func (export "run") (result i32)
      (i32.store (i32.const 0) (i32.const 42))
      (i32.load (i32.const 0)))
  )
  (core instance $i (instantiate $m))
  (func (export "run") (result u32) (canon lift (core func $i "run")))
)
