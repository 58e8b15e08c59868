//! The engine settings and per-request instance lifecycle shared by the Python extension and the
//! reference host: the pooling allocator (slots reused, memory images mapped copy-on-write),
//! `InstancePre` (imports resolved once per component), epoch interruption for CPU deadlines and
//! `StoreLimits` for memory. Guests get WASI preview 2 with nothing preopened, no sockets, no
//! environment, and waits that answer at once (a thread blocked in a host wait is the one thing an
//! epoch deadline cannot stop).

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use wasmtime::component::{Component, InstancePre, Linker, Resource, ResourceTable, TypedFunc};
use wasmtime::{
    format_err, Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Result, Store, StoreLimits,
    StoreLimitsBuilder,
};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::DynPollable;
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

pub const HOST_INTERFACE: &str = "tars:guest/host@0.1.0";
// The WASI version wasmtime-wasi 48 implements; shadowing a function needs this exact name.
pub const WASI_POLL: &str = "wasi:io/poll@0.2.12";
pub const EPOCH_TICK: Duration = Duration::from_millis(5);
// Kept from the guest's stderr for logs; out-of-memory markers are looked for in all of it.
const STDERR_KEEP: usize = 8192;
// Printed by CPython (MemoryError) or Rust's allocator when memory.grow is refused by the limit.
const MEMORY_MARKERS: [&[u8]; 2] = [b"MemoryError", b"memory allocation of"];

pub type Handle = TypedFunc<(String,), (Result<String, String>,)>;
/// `tars:guest/host.call(name, args)`: the guest sees `ok(text)` or `err(text)`.
pub type HostFn = Arc<dyn Fn(String, String) -> Result<String, String> + Send + Sync>;

/// Slots the pooling allocator reserves up front (virtual address space, not memory).
#[derive(Clone, Copy, Debug)]
pub struct PoolSize {
    pub instances: u32,
}

pub fn engine(pool: PoolSize) -> Result<Engine> {
    let mut pooling = PoolingAllocationConfig::default();
    let n = pool.instances;
    pooling
        .total_component_instances(n)
        // componentize-py guests have a dozen core instances and a few memories and tables each.
        .total_core_instances(n * 8)
        .total_memories(n * 2)
        .total_tables(n * 4)
        .total_stacks(n)
        .max_core_instances_per_component(64)
        .max_memories_per_component(8)
        .max_tables_per_component(16)
        .max_tables_per_module(4)
        .max_memories_per_module(2)
        .table_elements(100_000)
        .max_core_instance_size(8 << 20)
        .max_component_instance_size(8 << 20)
        .max_memory_size(4 << 30);
    let mut config = Config::new();
    config
        .epoch_interruption(true)
        .memory_init_cow(true)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pooling));
    Engine::new(&config)
}

/// Increments the engine's epoch every tick until the process ends.
pub fn start_ticker(engine: &Engine) {
    let weak = engine.weak();
    std::thread::Builder::new()
        .name("tars-epoch".into())
        .spawn(move || {
            while let Some(engine) = weak.upgrade() {
                drop(engine);
                std::thread::sleep(EPOCH_TICK);
                match weak.upgrade() {
                    Some(engine) => engine.increment_epoch(),
                    None => break,
                }
            }
        })
        .expect("spawning the epoch ticker");
}

pub fn epoch_ticks(milliseconds: u64) -> u64 {
    let tick = EPOCH_TICK.as_millis() as u64;
    milliseconds.div_ceil(tick).max(1)
}

/// The start of the guest's stderr, and whether it reported running out of memory.
#[derive(Default)]
pub struct StderrHead {
    pub head: Vec<u8>,
    pub out_of_memory: bool,
}

#[derive(Clone, Default)]
pub struct StderrPipe(pub Arc<Mutex<StderrHead>>);

impl StderrPipe {
    fn write(&self, data: &[u8]) {
        let mut state = self.0.lock().unwrap();
        if !state.out_of_memory && MEMORY_MARKERS.iter().any(|m| data.windows(m.len()).any(|w| w == *m)) {
            state.out_of_memory = true;
        }
        let room = STDERR_KEEP.saturating_sub(state.head.len());
        state.head.extend_from_slice(&data[..room.min(data.len())]);
    }
}

impl IsTerminal for StderrPipe {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for StderrPipe {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl tokio::io::AsyncWrite for StderrPipe {
    fn poll_write(self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        self.write(buf);
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

pub struct State {
    wasi: WasiCtx,
    table: ResourceTable,
    limits: StoreLimits,
    // This store's host calls, in place of the linker's (the native front answers them in Rust).
    host: Option<HostFn>,
}

impl WasiView for State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// A linker with WASI p2 (waits answering at once) and `tars:guest/host.call` bound to `host_call`.
pub fn linker<F>(engine: &Engine, host_call: F) -> Result<Linker<State>>
where
    F: Fn(String, String) -> Result<String, String> + Send + Sync + 'static,
{
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
    linker.allow_shadowing(true);
    {
        let mut poll = linker.instance(WASI_POLL)?;
        poll.func_wrap("poll", |_store, (pollables,): (Vec<Resource<DynPollable>>,)| {
            Ok(((0..pollables.len() as u32).collect::<Vec<u32>>(),))
        })?;
        poll.func_wrap(
            "[method]pollable.block",
            |_store, (_pollable,): (Resource<DynPollable>,)| Ok(()),
        )?;
    }
    linker.allow_shadowing(false);
    linker.instance(HOST_INTERFACE)?.func_wrap(
        "call",
        move |store: wasmtime::StoreContextMut<'_, State>, (name, args): (String, String)| {
            Ok((match &store.data().host {
                Some(host) => host(name, args),
                None => host_call(name, args),
            },))
        },
    )?;
    Ok(linker)
}

/// Where a prepared component's `handle` export lives, looked up once.
pub struct Prepared {
    pub pre: InstancePre<State>,
    pub handle: wasmtime::component::ComponentExportIndex,
}

pub fn prepare(linker: &Linker<State>, component: &Component) -> Result<Prepared> {
    let handle = component.get_export_index(None, "handle").ok_or_else(|| {
        format_err!("component exports no `handle` function (is it of the tars:guest function world?)")
    })?;
    Ok(Prepared {
        pre: linker.instantiate_pre(component)?,
        handle,
    })
}

/// A fresh store and instance; `instantiate_ticks` bounds start-up; `host`, when given, answers the
/// guest's host calls in place of the linker's.
pub fn instantiate(
    prepared: &Prepared,
    memory_bytes: usize,
    instantiate_ticks: u64,
    stderr: StderrPipe,
    host: Option<HostFn>,
) -> Result<(Store<State>, Handle)> {
    let wasi = WasiCtxBuilder::new().stderr(stderr).build(); // stdout is discarded by default
    let limits = StoreLimitsBuilder::new().memory_size(memory_bytes).build();
    let mut store = Store::new(
        prepared.pre.engine(),
        State {
            wasi,
            table: ResourceTable::new(),
            limits,
            host,
        },
    );
    store.limiter(|state| &mut state.limits);
    store.set_epoch_deadline(instantiate_ticks);
    let instance = prepared.pre.instantiate(&mut store)?;
    let handle = instance.get_typed_func::<(String,), (Result<String, String>,)>(&mut store, &prepared.handle)?;
    Ok((store, handle))
}

pub enum Outcome {
    Ok(String),
    Rejected(String),
    Timeout,
    Trap(String),
}

/// Runs `handle` once with a CPU budget of `cpu_ticks` epochs; the store is dropped afterwards.
pub fn call(mut store: Store<State>, handle: Handle, input: String, cpu_ticks: u64) -> Outcome {
    store.set_epoch_deadline(cpu_ticks);
    match handle.call(&mut store, (input,)) {
        Ok((Ok(output),)) => Outcome::Ok(output),
        Ok((Err(refused),)) => Outcome::Rejected(refused),
        Err(error) => match error.downcast_ref::<wasmtime::Trap>() {
            Some(wasmtime::Trap::Interrupt) => Outcome::Timeout,
            _ => Outcome::Trap(format!("{error:?}")),
        },
    }
}
