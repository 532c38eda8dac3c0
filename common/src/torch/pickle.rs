//! A restricted unpickler for the `data.pkl` of a `torch.save` archive: it interprets the
//! few objects a state dict is made of (dicts, `OrderedDict`, tuples, numbers, strings,
//! `torch._utils._rebuild_tensor_v2` and `_rebuild_parameter`, storages given by
//! `persistent_load` tuples) and refuses every other global by name. Nothing is ever
//! called or imported: a tensor becomes the description of where its elements are.

use std::collections::HashMap;
use std::rc::Rc;

use crate::error::TorchError;

/// One tensor of the pickled state dict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PickledTensor {
    pub name: String,
    pub storage: StorageRef,
    /// Offset of element `[0, …, 0]` in the storage, in elements.
    pub storage_offset: u64,
    pub shape: Vec<u64>,
    /// In elements.
    pub strides: Vec<u64>,
}

/// A storage as `persistent_load` names it: `('storage', torch.<Type>Storage, key,
/// location, numel)`. Its bytes are the archive entry `<prefix>/data/<key>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageRef {
    pub key: String,
    /// The storage class, e.g. `HalfStorage`.
    pub storage_type: String,
    /// Elements the storage holds.
    pub numel: u64,
}

/// The tensors of a pickled state dict (a `dict` or `OrderedDict` of name → tensor), in
/// the order they were pickled. Entries that are not tensors are left out.
pub fn parse_state_dict(pickle: &[u8]) -> Result<Vec<PickledTensor>, TorchError> {
    let mut unpickler = Unpickler::new(pickle);
    let root = unpickler.run()?;
    let Value::Dict(map) = root else {
        return Err(TorchError::BadPickle {
            offset: 0,
            message: format!(
                "the pickled object is {}, not a dict of tensors",
                root.kind()
            ),
        });
    };
    let mut tensors = Vec::new();
    for (key, value) in &map.pairs {
        if let (Value::Str(name), Value::Tensor(tensor)) = (key, value) {
            // A memoised tensor or name may be named again and again for a few bytes each.
            let storage = &tensor.storage;
            unpickler.charge(
                std::mem::size_of::<PickledTensor>()
                    + name.len()
                    + storage.key.len()
                    + storage.storage_type.len()
                    + 16 * tensor.shape.len(),
            )?;
            tensors.push(PickledTensor {
                name: name.to_string(),
                storage: tensor.storage.as_ref().clone(),
                storage_offset: tensor.storage_offset,
                shape: tensor.shape.clone(),
                strides: tensor.strides.clone(),
            });
        }
    }
    Ok(tensors)
}

/// Deeper nesting than any state dict has; bounding it keeps dropping values off the
/// native stack's limits whatever the input.
pub const MAX_DEPTH: u32 = 64;
/// More dimensions than any tensor has (torch itself stops at 64).
pub const MAX_DIMS: usize = 64;
/// Bytes the unpickler may copy out of values that are shared (memoised containers changed
/// in place, arguments and strings used again, tensors named again), per byte of pickle,
/// and in all besides: a real state dict copies less than its own size, and without a
/// bound a few bytes that reuse a large value would cost quadratic time and memory.
pub const COPY_BYTES_PER_BYTE: usize = 32;
pub const COPY_BYTES_FIXED: usize = 1 << 20;

/// The globals a state dict may name.
#[derive(Debug, Clone, PartialEq)]
enum Global {
    OrderedDict,
    RebuildTensor,
    RebuildParameter,
    StorageType(Rc<str>),
}

#[derive(Debug)]
struct Tensor {
    storage: Rc<StorageRef>,
    storage_offset: u64,
    shape: Vec<u64>,
    strides: Vec<u64>,
}

#[derive(Debug, Clone, Default)]
struct Seq {
    items: Vec<Value>,
    depth: u32,
}

#[derive(Debug, Clone, Default)]
struct Map {
    pairs: Vec<(Value, Value)>,
    depth: u32,
}

#[derive(Debug, Clone)]
enum Value {
    None,
    Bool,
    Int(i64),
    Float,
    Str(Rc<str>),
    Bytes,
    Tuple(Rc<Seq>),
    List(Rc<Seq>),
    Dict(Rc<Map>),
    Global(Global),
    Storage(Rc<StorageRef>),
    Tensor(Rc<Tensor>),
}

impl Value {
    fn kind(&self) -> &'static str {
        match self {
            Value::None => "None",
            Value::Bool => "a bool",
            Value::Int(_) => "an int",
            Value::Float => "a float",
            Value::Str(_) => "a string",
            Value::Bytes => "bytes",
            Value::Tuple(_) => "a tuple",
            Value::List(_) => "a list",
            Value::Dict(_) => "a dict",
            Value::Global(_) => "a global",
            Value::Storage(_) => "a storage",
            Value::Tensor(_) => "a tensor",
        }
    }

    fn depth(&self) -> u32 {
        match self {
            Value::Tuple(s) | Value::List(s) => s.depth,
            Value::Dict(m) => m.depth,
            _ => 0,
        }
    }
}

/// Opcodes of pickle protocols 2 to 5 that a state dict can use (the reader's, and what the
/// stand-in Hub's generated archives write).
pub mod op {
    pub const PROTO: u8 = 0x80;
    pub const FRAME: u8 = 0x95;
    pub const STOP: u8 = b'.';
    pub const MARK: u8 = b'(';
    pub const POP: u8 = b'0';
    pub const POP_MARK: u8 = b'1';
    pub const DUP: u8 = b'2';
    pub const NONE: u8 = b'N';
    pub const NEWTRUE: u8 = 0x88;
    pub const NEWFALSE: u8 = 0x89;
    pub const BININT: u8 = b'J';
    pub const BININT1: u8 = b'K';
    pub const BININT2: u8 = b'M';
    pub const LONG1: u8 = 0x8a;
    pub const LONG4: u8 = 0x8b;
    pub const BINFLOAT: u8 = b'G';
    pub const SHORT_BINSTRING: u8 = b'U';
    pub const BINSTRING: u8 = b'T';
    pub const SHORT_BINUNICODE: u8 = 0x8c;
    pub const BINUNICODE: u8 = b'X';
    pub const BINUNICODE8: u8 = 0x8d;
    pub const SHORT_BINBYTES: u8 = b'C';
    pub const BINBYTES: u8 = b'B';
    pub const BINBYTES8: u8 = 0x8e;
    pub const EMPTY_TUPLE: u8 = b')';
    pub const TUPLE: u8 = b't';
    pub const TUPLE1: u8 = 0x85;
    pub const TUPLE2: u8 = 0x86;
    pub const TUPLE3: u8 = 0x87;
    pub const EMPTY_LIST: u8 = b']';
    pub const LIST: u8 = b'l';
    pub const APPEND: u8 = b'a';
    pub const APPENDS: u8 = b'e';
    pub const EMPTY_DICT: u8 = b'}';
    pub const DICT: u8 = b'd';
    pub const SETITEM: u8 = b's';
    pub const SETITEMS: u8 = b'u';
    pub const BINPUT: u8 = b'q';
    pub const LONG_BINPUT: u8 = b'r';
    pub const MEMOIZE: u8 = 0x94;
    pub const BINGET: u8 = b'h';
    pub const LONG_BINGET: u8 = b'j';
    pub const GLOBAL: u8 = b'c';
    pub const STACK_GLOBAL: u8 = 0x93;
    pub const REDUCE: u8 = b'R';
    pub const BUILD: u8 = b'b';
    pub const BINPERSID: u8 = b'Q';
}

struct Unpickler<'a> {
    bytes: &'a [u8],
    at: usize,
    /// Where the opcode being run began, for error messages.
    op_at: usize,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
    /// Bytes left to copy out of shared values (see [`COPY_BYTES_PER_BYTE`]); an input
    /// that needs more is refused instead of taking quadratic time and memory.
    copy_budget: usize,
}

impl<'a> Unpickler<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Unpickler {
            bytes,
            at: 0,
            op_at: 0,
            stack: Vec::new(),
            marks: Vec::new(),
            memo: HashMap::new(),
            copy_budget: bytes
                .len()
                .saturating_mul(COPY_BYTES_PER_BYTE)
                .saturating_add(COPY_BYTES_FIXED),
        }
    }

    fn error(&self, message: impl Into<String>) -> TorchError {
        TorchError::BadPickle {
            offset: self.op_at,
            message: message.into(),
        }
    }

    fn run(&mut self) -> Result<Value, TorchError> {
        loop {
            self.op_at = self.at;
            let code = self.take(1)?[0];
            if code == op::STOP {
                let root = self.pop()?;
                return match self.stack.is_empty() && self.marks.is_empty() {
                    true => Ok(root),
                    false => Err(self.error("STOP with values left on the stack")),
                };
            }
            self.step(code)?;
        }
    }

    fn step(&mut self, code: u8) -> Result<(), TorchError> {
        match code {
            op::PROTO => {
                let version = self.take(1)?[0];
                if version > 5 {
                    return Err(self.error(format!("pickle protocol {version} is unknown")));
                }
            }
            op::FRAME => {
                self.take(8)?;
            }
            op::MARK => self.marks.push(self.stack.len()),
            op::POP => {
                self.pop()?;
            }
            op::POP_MARK => {
                self.pop_mark()?;
            }
            op::DUP => {
                let top = self.stack.last().cloned();
                let top = top.ok_or_else(|| self.error("DUP on an empty stack"))?;
                self.stack.push(top);
            }
            op::BINPUT | op::LONG_BINPUT | op::MEMOIZE | op::BINGET | op::LONG_BINGET => {
                self.memo_op(code)?
            }
            op::GLOBAL | op::STACK_GLOBAL => {
                let global = self.global(code)?;
                self.stack.push(Value::Global(global));
            }
            op::REDUCE => self.reduce()?,
            op::BUILD => self.build()?,
            op::BINPERSID => self.persistent_load()?,
            _ => match self.scalar(code)? {
                Some(value) => self.stack.push(value),
                None => self.container_op(code)?,
            },
        }
        Ok(())
    }

    /// The value a scalar opcode pushes, or `None` for any other opcode.
    fn scalar(&mut self, code: u8) -> Result<Option<Value>, TorchError> {
        let value = match code {
            op::NONE => Value::None,
            op::NEWTRUE | op::NEWFALSE => Value::Bool,
            op::BININT1 => Value::Int(self.take(1)?[0].into()),
            op::BININT2 => Value::Int(self.uint(2)? as i64),
            op::BININT => Value::Int(i64::from(self.uint(4)? as u32 as i32)),
            op::LONG1 => {
                let len = self.uint(1)?;
                self.long(len)?
            }
            op::LONG4 => {
                let len = self.uint(4)?;
                self.long(len)?
            }
            op::BINFLOAT => {
                self.take(8)?;
                Value::Float
            }
            op::SHORT_BINSTRING | op::SHORT_BINUNICODE => self.string(1)?,
            op::BINSTRING | op::BINUNICODE => self.string(4)?,
            op::BINUNICODE8 => self.string(8)?,
            op::SHORT_BINBYTES | op::BINBYTES | op::BINBYTES8 => {
                let width = match code {
                    op::SHORT_BINBYTES => 1,
                    op::BINBYTES => 4,
                    _ => 8,
                };
                let len = self.uint(width)?;
                self.take_len(len)?;
                Value::Bytes
            }
            _ => return Ok(None),
        };
        Ok(Some(value))
    }

    fn container_op(&mut self, code: u8) -> Result<(), TorchError> {
        match code {
            op::EMPTY_TUPLE => self.stack.push(Value::Tuple(Rc::default())),
            op::TUPLE => {
                let items = self.pop_mark()?;
                self.push_seq(items, Value::Tuple)?;
            }
            op::TUPLE1 | op::TUPLE2 | op::TUPLE3 => {
                let n = usize::from(code - op::TUPLE1 + 1);
                let split = self.stack.len().checked_sub(n);
                let split = split.ok_or_else(|| self.error("TUPLE on a short stack"))?;
                if self.marks.last().is_some_and(|&m| m > split) {
                    return Err(self.error("TUPLE reaches below a MARK"));
                }
                let items = self.stack.split_off(split);
                self.push_seq(items, Value::Tuple)?;
            }
            op::EMPTY_LIST => self.stack.push(Value::List(Rc::default())),
            op::LIST => {
                let items = self.pop_mark()?;
                self.push_seq(items, Value::List)?;
            }
            op::APPEND => {
                let item = self.pop()?;
                self.append(vec![item])?;
            }
            op::APPENDS => {
                let items = self.pop_mark()?;
                self.append(items)?;
            }
            op::EMPTY_DICT => self.stack.push(Value::Dict(Rc::default())),
            op::DICT => {
                let items = self.pop_mark()?;
                self.stack.push(Value::Dict(Rc::default()));
                self.set_items(items)?;
            }
            op::SETITEM => {
                let value = self.pop()?;
                let key = self.pop()?;
                self.set_items(vec![key, value])?;
            }
            op::SETITEMS => {
                let items = self.pop_mark()?;
                self.set_items(items)?;
            }
            _ => {
                return Err(self.error(format!(
                    "opcode 0x{code:02x} is not one a state dict is written with"
                )))
            }
        }
        Ok(())
    }

    fn memo_op(&mut self, code: u8) -> Result<(), TorchError> {
        let index = match code {
            op::BINPUT | op::BINGET => self.uint(1)?,
            op::LONG_BINPUT | op::LONG_BINGET => self.uint(4)?,
            _ => self.memo.len() as u64,
        } as u32;
        if matches!(code, op::BINGET | op::LONG_BINGET) {
            let value = self.memo.get(&index).cloned();
            let value = value.ok_or_else(|| self.error(format!("memo {index} was never set")))?;
            self.stack.push(value);
        } else {
            let top = self.stack.last().cloned();
            let top = top.ok_or_else(|| self.error("memoising from an empty stack"))?;
            self.memo.insert(index, top);
        }
        Ok(())
    }

    fn global(&mut self, code: u8) -> Result<Global, TorchError> {
        // STACK_GLOBAL's strings may be memoised ones used again: they are compared, and
        // copied only into the error that ends the parse.
        let (module, name): (Rc<str>, Rc<str>) = if code == op::GLOBAL {
            (self.line()?.into(), self.line()?.into())
        } else {
            let name = self.pop()?;
            let module = self.pop()?;
            match (module, name) {
                (Value::Str(m), Value::Str(n)) => (m, n),
                _ => return Err(self.error("STACK_GLOBAL without two strings")),
            }
        };
        match (&*module, &*name) {
            ("collections", "OrderedDict") => Ok(Global::OrderedDict),
            ("torch._utils", "_rebuild_tensor_v2") => Ok(Global::RebuildTensor),
            ("torch._utils", "_rebuild_parameter" | "_rebuild_parameter_with_state") => {
                Ok(Global::RebuildParameter)
            }
            ("torch", storage) if storage.ends_with("Storage") => Ok(Global::StorageType(name)),
            _ => Err(TorchError::UnknownGlobal {
                module: module.to_string(),
                name: name.to_string(),
            }),
        }
    }

    fn reduce(&mut self) -> Result<(), TorchError> {
        let args = match self.pop()? {
            Value::Tuple(args) => args,
            other => return Err(self.error(format!("REDUCE with {} as arguments", other.kind()))),
        };
        let value = match self.pop()? {
            Value::Global(Global::OrderedDict) => self.ordered_dict(&args.items)?,
            Value::Global(Global::RebuildTensor) => self.rebuild_tensor(&args.items)?,
            Value::Global(Global::RebuildParameter) => match args.items.first() {
                Some(tensor @ Value::Tensor(_)) => tensor.clone(),
                _ => return Err(self.error("_rebuild_parameter without a tensor")),
            },
            other => return Err(self.error(format!("REDUCE calls {}", other.kind()))),
        };
        self.stack.push(value);
        Ok(())
    }

    /// `OrderedDict()` or `OrderedDict([(key, value), …])`.
    fn ordered_dict(&mut self, args: &[Value]) -> Result<Value, TorchError> {
        self.stack.push(Value::Dict(Rc::default()));
        match args {
            [] => {}
            [Value::List(pairs)] | [Value::Tuple(pairs)] => {
                // The pairs may be a memoised list passed again and again.
                self.charge(pairs.items.len() * 2 * std::mem::size_of::<Value>())?;
                let mut items = Vec::with_capacity(pairs.items.len() * 2);
                for pair in &pairs.items {
                    match pair {
                        Value::Tuple(kv) if kv.items.len() == 2 => items.extend(kv.items.clone()),
                        _ => return Err(self.error("OrderedDict item is not a pair")),
                    }
                }
                self.set_items(items)?;
            }
            _ => return Err(self.error("OrderedDict called with unexpected arguments")),
        }
        self.pop()
    }

    /// `_rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad,
    /// backward_hooks[, metadata])`.
    fn rebuild_tensor(&mut self, args: &[Value]) -> Result<Value, TorchError> {
        let [Value::Storage(storage), Value::Int(offset), Value::Tuple(shape), Value::Tuple(strides), ..] =
            args
        else {
            return Err(self
                .error("_rebuild_tensor_v2 without (storage, offset, size, stride, …) arguments"));
        };
        if shape.items.len() > MAX_DIMS {
            return Err(self.error(format!(
                "a tensor with {} dimensions (at most {MAX_DIMS})",
                shape.items.len()
            )));
        }
        // Size and strides may be memoised tuples used by many tensors.
        self.charge(16 * shape.items.len())?;
        let count = |v: &i64| u64::try_from(*v).ok();
        let ints = |seq: &Seq| -> Option<Vec<u64>> {
            seq.items
                .iter()
                .map(|v| match v {
                    Value::Int(i) => count(i),
                    _ => None,
                })
                .collect()
        };
        let (Some(shape), Some(strides), Some(offset)) =
            (ints(shape), ints(strides), count(offset))
        else {
            return Err(self.error("a tensor's offset, size or stride is not a count"));
        };
        if shape.len() != strides.len() {
            return Err(self.error(format!(
                "a tensor has {} sizes but {} strides",
                shape.len(),
                strides.len()
            )));
        }
        Ok(Value::Tensor(Rc::new(Tensor {
            storage: storage.clone(),
            storage_offset: offset,
            shape,
            strides,
        })))
    }

    /// `BUILD` sets an object's state: a state dict's `_metadata` or a tensor's Python
    /// attributes, neither of which says where elements are.
    fn build(&mut self) -> Result<(), TorchError> {
        let _state = self.pop()?;
        match self.stack.last() {
            Some(Value::Dict(_) | Value::Tensor(_)) => Ok(()),
            Some(other) => Err(self.error(format!("BUILD on {}", other.kind()))),
            None => Err(self.error("BUILD on an empty stack")),
        }
    }

    fn persistent_load(&mut self) -> Result<(), TorchError> {
        let pid = self.pop()?;
        let storage = match &pid {
            Value::Tuple(t) => match t.items.as_slice() {
                [Value::Str(tag), Value::Global(Global::StorageType(storage_type)), Value::Str(key), _location, Value::Int(numel)]
                    if &**tag == "storage" =>
                {
                    u64::try_from(*numel).ok().map(|numel| StorageRef {
                        key: key.to_string(),
                        storage_type: storage_type.to_string(),
                        numel,
                    })
                }
                _ => None,
            },
            _ => None,
        };
        let storage = storage.ok_or_else(|| {
            self.error("persistent id is not ('storage', type, key, location, numel)")
        })?;
        // The key and type may be memoised strings named by many storages.
        self.charge(storage.key.len() + storage.storage_type.len())?;
        self.stack.push(Value::Storage(Rc::new(storage)));
        Ok(())
    }

    fn push_seq(
        &mut self,
        items: Vec<Value>,
        wrap: fn(Rc<Seq>) -> Value,
    ) -> Result<(), TorchError> {
        let depth = self.depth_of(items.iter())?;
        self.stack.push(wrap(Rc::new(Seq { items, depth })));
        Ok(())
    }

    fn depth_of<'v>(&self, items: impl Iterator<Item = &'v Value>) -> Result<u32, TorchError> {
        let depth = items.map(Value::depth).max().unwrap_or(0) + 1;
        if depth > MAX_DEPTH {
            return Err(self.error(format!("values nested deeper than {MAX_DEPTH}")));
        }
        Ok(depth)
    }

    fn append(&mut self, items: Vec<Value>) -> Result<(), TorchError> {
        let depth = self.depth_of(items.iter())?;
        let mut list = match self.stack.pop() {
            Some(Value::List(list)) => list,
            _ => return Err(self.error("APPEND to something that is not a list")),
        };
        self.charge_copy(&list, list.items.len() * std::mem::size_of::<Value>())?;
        let seq = Rc::make_mut(&mut list);
        seq.depth = seq.depth.max(depth);
        seq.items.extend(items);
        self.stack.push(Value::List(list));
        Ok(())
    }

    /// Adds `items` (key, value, key, value, …) to the dict on top of the stack.
    fn set_items(&mut self, items: Vec<Value>) -> Result<(), TorchError> {
        if !items.len().is_multiple_of(2) {
            return Err(self.error("SETITEMS with a key but no value"));
        }
        let depth = self.depth_of(items.iter())?;
        let mut dict = match self.stack.pop() {
            Some(Value::Dict(dict)) => dict,
            _ => return Err(self.error("SETITEM on something that is not a dict")),
        };
        self.charge_copy(
            &dict,
            dict.pairs.len() * std::mem::size_of::<(Value, Value)>(),
        )?;
        let map = Rc::make_mut(&mut dict);
        map.depth = map.depth.max(depth);
        let mut items = items.into_iter();
        while let (Some(key), Some(value)) = (items.next(), items.next()) {
            map.pairs.push((key, value));
        }
        self.stack.push(Value::Dict(dict));
        Ok(())
    }

    /// Charges the `bytes` `Rc::make_mut` is about to copy when `shared` is also held by
    /// the memo.
    fn charge_copy<T>(&mut self, shared: &Rc<T>, bytes: usize) -> Result<(), TorchError> {
        if Rc::strong_count(shared) > 1 {
            self.charge(bytes)?;
        }
        Ok(())
    }

    /// Takes `bytes` copied out of shared values from the budget.
    fn charge(&mut self, bytes: usize) -> Result<(), TorchError> {
        self.copy_budget = self
            .copy_budget
            .checked_sub(bytes)
            .ok_or_else(|| self.error("copies more of its shared values than a state dict does"))?;
        Ok(())
    }

    fn pop(&mut self) -> Result<Value, TorchError> {
        if self.marks.last().is_some_and(|&m| m >= self.stack.len()) {
            return Err(self.error("popping past a MARK"));
        }
        self.stack
            .pop()
            .ok_or_else(|| self.error("popping an empty stack"))
    }

    fn pop_mark(&mut self) -> Result<Vec<Value>, TorchError> {
        let mark = self.marks.pop();
        let mark = mark.ok_or_else(|| self.error("no MARK to pop to"))?;
        Ok(self.stack.split_off(mark))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], TorchError> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.bytes.len());
        let end = end.ok_or_else(|| self.error("ends in the middle of an opcode"))?;
        let slice = &self.bytes[self.at..end];
        self.at = end;
        Ok(slice)
    }

    fn take_len(&mut self, len: u64) -> Result<&'a [u8], TorchError> {
        let len = usize::try_from(len).map_err(|_| self.error("a length beyond memory"))?;
        self.take(len)
    }

    /// A little-endian unsigned integer of `width` bytes.
    fn uint(&mut self, width: usize) -> Result<u64, TorchError> {
        let bytes = self.take(width)?;
        Ok(bytes
            .iter()
            .rev()
            .fold(0u64, |acc, &b| (acc << 8) | u64::from(b)))
    }

    /// A two's-complement little-endian integer of `len` bytes (`LONG1`, `LONG4`).
    fn long(&mut self, len: u64) -> Result<Value, TorchError> {
        if len > 8 {
            return Err(self.error("an integer wider than 64 bits"));
        }
        let bytes = self.take_len(len)?;
        let negative = bytes.last().is_some_and(|&b| b & 0x80 != 0);
        let mut word = [if negative { 0xFF } else { 0 }; 8];
        word[..bytes.len()].copy_from_slice(bytes);
        Ok(Value::Int(i64::from_le_bytes(word)))
    }

    /// A string whose length is a `width`-byte prefix.
    fn string(&mut self, width: usize) -> Result<Value, TorchError> {
        let len = self.uint(width)?;
        let bytes = self.take_len(len)?;
        Ok(Value::Str(String::from_utf8_lossy(bytes).into()))
    }

    /// A newline-terminated line (`GLOBAL`'s module and name).
    fn line(&mut self) -> Result<String, TorchError> {
        let rest = &self.bytes[self.at..];
        let len = rest.iter().position(|&b| b == b'\n');
        let len = len.ok_or_else(|| self.error("GLOBAL without a newline"))?;
        let line = String::from_utf8_lossy(&rest[..len]).into_owned();
        self.at += len + 1;
        Ok(line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `{'w': _rebuild_tensor_v2(('storage', torch.HalfStorage, '0', 'cpu', 6), 1, (2, 2),
    /// (1, 2), False, OrderedDict())}` as protocol 2 writes it.
    fn one_tensor(storage_type: &str) -> Vec<u8> {
        let mut p = vec![0x80, 2, b'}', b'q', 0, b'X', 1, 0, 0, 0, b'w'];
        p.extend(b"ctorch._utils\n_rebuild_tensor_v2\n(");
        p.extend(b"(X\x07\x00\x00\x00storagec");
        p.extend(format!("torch\n{storage_type}\n").as_bytes());
        p.extend(b"X\x01\x00\x00\x000X\x03\x00\x00\x00cpuK\x06tQ");
        p.extend(b"K\x01K\x02K\x02\x86K\x01K\x02\x86\x89");
        p.extend(b"ccollections\nOrderedDict\n)Rt");
        p.extend(b"Rs.");
        p
    }

    #[test]
    fn a_tensor_is_its_storage_offset_shape_and_strides() {
        let tensors = parse_state_dict(&one_tensor("HalfStorage")).unwrap();
        assert_eq!(
            tensors,
            vec![PickledTensor {
                name: "w".into(),
                storage: StorageRef {
                    key: "0".into(),
                    storage_type: "HalfStorage".into(),
                    numel: 6,
                },
                storage_offset: 1,
                shape: vec![2, 2],
                strides: vec![1, 2],
            }]
        );
    }

    #[test]
    fn unknown_globals_are_refused_by_name() {
        let mut p = vec![0x80, 2];
        p.extend(b"cos\nsystem\nX\x02\x00\x00\x00lsR.");
        assert_eq!(
            parse_state_dict(&p),
            Err(TorchError::UnknownGlobal {
                module: "os".into(),
                name: "system".into()
            })
        );
    }

    #[test]
    fn every_prefix_and_flipped_byte_is_an_error_or_a_result_never_a_panic() {
        let good = one_tensor("FloatStorage");
        for len in 0..good.len() {
            assert!(parse_state_dict(&good[..len]).is_err(), "prefix {len}");
        }
        for at in 0..good.len() {
            for flip in [0x01, 0x80, 0xFF] {
                let mut bad = good.clone();
                bad[at] ^= flip;
                let _ = parse_state_dict(&bad);
            }
        }
    }

    #[test]
    fn deep_nesting_is_refused() {
        let mut p = vec![0x80, 2, b')'];
        p.extend(std::iter::repeat_n(0x85, 100_000));
        p.push(b'.');
        let err = parse_state_dict(&p).unwrap_err();
        assert!(err.to_string().contains("nested deeper"), "{err}");
    }
}
