//! The log's filter (`log.level`, or `RUST_LOG` when set), replaceable while serving: a
//! SIGHUP that changes `log.level` applies it at once, as nginx's reload applies
//! `error_log`'s level.
//!
//! tracing caches each callsite's interest (always, never, sometimes) from the filter, so
//! an event whose level is on or off costs no call into the filter at all: the filter is
//! asked when a callsite first registers, for callsites it answered "sometimes" (directives
//! on span fields), and for spans. A replacement rebuilds those caches. That is why this
//! wraps `EnvFilter` itself rather than using `tracing_subscriber::reload`, whose layer takes
//! a lock shared by every thread on each event (twice), on the path of every access line.

use std::sync::{Arc, PoisonError, RwLock};

use tracing::level_filters::LevelFilter;
use tracing::subscriber::Interest;
use tracing::{Metadata, Subscriber, span};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::{Context, Layer};

/// The filter in force, shared by the subscriber's layer and whoever replaces it.
#[derive(Clone)]
pub(super) struct LiveFilter(Arc<RwLock<Arc<EnvFilter>>>);

impl LiveFilter {
    pub(super) fn new(filter: EnvFilter) -> LiveFilter {
        LiveFilter(Arc::new(RwLock::new(Arc::new(filter))))
    }

    fn current(&self) -> Arc<EnvFilter> {
        // Replacing an Arc cannot leave it half written: a poisoned lock holds a whole one.
        Arc::clone(&self.0.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Filters with `filter` from now on: every callsite's interest is worked out again.
    pub(super) fn replace(&self, filter: EnvFilter) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(filter);
        tracing::callsite::rebuild_interest_cache();
    }
}

impl<S: Subscriber> Layer<S> for LiveFilter {
    fn register_callsite(&self, metadata: &'static Metadata<'static>) -> Interest {
        Layer::<S>::register_callsite(&*self.current(), metadata)
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        self.current().max_level_hint()
    }

    fn enabled(&self, metadata: &Metadata<'_>, ctx: Context<'_, S>) -> bool {
        self.current().enabled(metadata, ctx)
    }

    // The span callbacks serve directives on span fields. A span begun before a
    // replacement is unknown to the new filter, which then applies no such directive to it.
    fn on_new_span(&self, attrs: &span::Attributes<'_>, id: &span::Id, ctx: Context<'_, S>) {
        self.current().on_new_span(attrs, id, ctx);
    }

    fn on_record(&self, id: &span::Id, values: &span::Record<'_>, ctx: Context<'_, S>) {
        self.current().on_record(id, values, ctx);
    }

    fn on_enter(&self, id: &span::Id, ctx: Context<'_, S>) {
        self.current().on_enter(id, ctx);
    }

    fn on_exit(&self, id: &span::Id, ctx: Context<'_, S>) {
        self.current().on_exit(id, ctx);
    }

    fn on_close(&self, id: span::Id, ctx: Context<'_, S>) {
        self.current().on_close(id, ctx);
    }
}
