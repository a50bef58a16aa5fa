//! Work split over the machine's cores, for the server's blocking
//! handlers (each terminal of a store's processing on its own core).

/// `f` of each of `items`, in their order, on as many threads as the
/// machine has cores (at most one per item), each in the caller's span.
pub(crate) fn each_on_a_core<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    let cores = *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, usize::from));
    let workers = cores.min(items.len());
    if workers <= 1 {
        return items.iter().map(f).collect();
    }
    let f = &f;
    let span = &tracing::Span::current();
    let mut out: Vec<(usize, R)> = std::thread::scope(|s| {
        let running: Vec<_> = (0..workers)
            .map(|w| {
                s.spawn(move || {
                    let _in = span.enter();
                    (w..items.len())
                        .step_by(workers)
                        .map(|i| (i, f(&items[i])))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        running
            .into_iter()
            .flat_map(|r| r.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    });
    out.sort_by_key(|(i, _)| *i);
    out.into_iter().map(|(_, r)| r).collect()
}

#[cfg(test)]
mod tests {
    use super::each_on_a_core;

    #[test]
    fn each_on_a_core_answers_in_the_order_asked_and_passes_a_panic_on() {
        let items: Vec<u32> = (0..37).collect();
        let threads = std::sync::Mutex::new(std::collections::BTreeSet::new());
        let out = each_on_a_core(&items, |n| {
            threads
                .lock()
                .unwrap()
                .insert(format!("{:?}", std::thread::current().id()));
            n * 2
        });
        assert_eq!(out, items.iter().map(|n| n * 2).collect::<Vec<_>>());
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        assert!(threads.lock().unwrap().len() <= cores.max(1));
        assert!(each_on_a_core(&[] as &[u32], |n| *n).is_empty());

        let caught = std::panic::catch_unwind(|| {
            each_on_a_core(&items, |n| {
                assert_ne!(*n, 20, "terminal twenty");
                *n
            })
        });
        let message = caught.expect_err("the panic comes through");
        let text = message
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| message.downcast_ref::<&str>().copied())
            .unwrap_or_default();
        assert!(text.contains("terminal twenty"), "{text}");
    }
}
