//! The NetworkPolicy evaluator on arbitrary policies, pods and namespaces (as the API server's
//! JSON would bring them) and arbitrary flows: it never panics, and a verdict of `denied` always
//! names a policy.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| triage_agent::fuzzing::policy_eval(data));
