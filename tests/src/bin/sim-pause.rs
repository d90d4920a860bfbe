//! The pause process of the simulated node's pod sandboxes (the runtime backend's pause image):
//! it holds the sandbox's namespaces, reaps zombies it inherits, and exits at once on SIGINT or
//! SIGTERM, as kubelet's pause does. `cargo xtask build` builds it static (musl) for the image.

extern "C" fn exit_now(_: libc::c_int) {
    // SAFETY: _exit is async-signal-safe.
    unsafe { libc::_exit(0) }
}

extern "C" fn reap(_: libc::c_int) {
    // SAFETY: waitpid is async-signal-safe; a null status pointer is allowed.
    while unsafe { libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) } > 0 {}
}

fn main() {
    let exit_now = exit_now as extern "C" fn(libc::c_int) as libc::sighandler_t;
    let reap = reap as extern "C" fn(libc::c_int) as libc::sighandler_t;
    // SAFETY: installing handlers that only call async-signal-safe functions.
    unsafe {
        libc::signal(libc::SIGINT, exit_now);
        libc::signal(libc::SIGTERM, exit_now);
        libc::signal(libc::SIGCHLD, reap);
    }
    loop {
        // SAFETY: pause(2) has no preconditions.
        unsafe { libc::pause() };
    }
}
