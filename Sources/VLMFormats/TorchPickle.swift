import Foundation

// The pickle inside a torch.save checkpoint (`data.pkl`), read by a restricted unpickler: it
// builds plain values and tensor records, and knows a short allow-list of globals. It never
// imports, calls or evaluates anything — a global outside the list, or a REDUCE of anything but
// the few tensor-rebuilding functions, stops the read with an error naming it.

/// A storage a tensor views: `data/<key>` in the archive, `count` elements of `dtype`.
struct TorchStorageRef: Sendable, Equatable {
    let key: String
    let dtype: TorchDType
    let count: Int
}

/// A tensor as `torch._utils._rebuild_tensor_v2` describes it: a strided view of a storage.
struct TorchTensorRecord: Sendable {
    let storage: TorchStorageRef
    let offset: Int
    let shape: [Int]
    let strides: [Int]
}

/// The element types of torch's typed storages, by the class name torch.save pickles.
enum TorchDType: String, Sendable, CaseIterable {
    case float = "FloatStorage", half = "HalfStorage", bfloat16 = "BFloat16Storage", double = "DoubleStorage"
    case long = "LongStorage", int = "IntStorage", short = "ShortStorage", char = "CharStorage"
    case byte = "ByteStorage", bool = "BoolStorage"

    var elementBytes: Int {
        switch self {
        case .double, .long: return 8
        case .float, .int: return 4
        case .half, .bfloat16, .short: return 2
        case .char, .byte, .bool: return 1
        }
    }

    /// The safetensors spelling, so both readers report dtypes alike.
    var name: String {
        switch self {
        case .float: return "F32"
        case .half: return "F16"
        case .bfloat16: return "BF16"
        case .double: return "F64"
        case .long: return "I64"
        case .int: return "I32"
        case .short: return "I16"
        case .char: return "I8"
        case .byte: return "U8"
        case .bool: return "BOOL"
        }
    }
}

/// The globals a checkpoint may name. Anything else is refused when the GLOBAL opcode is read.
enum TorchGlobal: Sendable, Equatable {
    case orderedDict
    case rebuildTensor
    case rebuildParameter
    case rebuildParameterWithState
    case rebuildFromType
    case tensorClass
    case parameterClass
    case storage(TorchDType)

    init?(module: String, name: String) {
        switch (module, name) {
        case ("collections", "OrderedDict"): self = .orderedDict
        case ("torch._utils", "_rebuild_tensor_v2"): self = .rebuildTensor
        case ("torch._utils", "_rebuild_parameter"): self = .rebuildParameter
        case ("torch._utils", "_rebuild_parameter_with_state"): self = .rebuildParameterWithState
        case ("torch._tensor", "_rebuild_from_type_v2"): self = .rebuildFromType
        case ("torch", "Tensor"): self = .tensorClass
        case ("torch.nn.parameter", "Parameter"): self = .parameterClass
        case ("torch", _):
            guard let dtype = TorchDType(rawValue: name) else { return nil }
            self = .storage(dtype)
        default: return nil
        }
    }
}

/// Mutable containers are shared through the memo, so they are reference types. A hostile
/// pickle can chain them millions deep (or into cycles); the unpickler empties every one it made
/// when it is done, so none is freed recursively.
final class PickleList { var items: [PickleValue] = [] }
final class PickleDict { var items: [(key: PickleValue, value: PickleValue)] = [] }

/// Tuples are immutable, so their nesting depth is known when they are built and can be capped
/// (freeing a deep chain would recurse once per level).
final class PickleTuple {
    let items: [PickleValue]
    let depth: Int
    init(_ items: [PickleValue], depth: Int) { self.items = items; self.depth = depth }
}

indirect enum PickleValue {
    case none
    case bool(Bool)
    case int(Int)
    case float(Double)
    case string(String)
    case tuple(PickleTuple)
    case list(PickleList)
    case dict(PickleDict)
    case global(TorchGlobal)
    case storage(TorchStorageRef)
    case tensor(TorchTensorRecord)

    var kind: String {
        switch self {
        case .none: return "None"
        case .bool: return "bool"
        case .int: return "int"
        case .float: return "float"
        case .string: return "str"
        case .tuple: return "tuple"
        case .list: return "list"
        case .dict: return "dict"
        case .global: return "global"
        case .storage: return "storage"
        case .tensor: return "tensor"
        }
    }
}

/// A pickle that cannot be read, or that asks for something outside the allow-list.
struct PickleError: Error, CustomStringConvertible {
    let description: String
    init(_ message: String) { description = message }
}

/// Reads pickle protocols 2-5 as torch.save writes them. `bytes` is borrowed for the call only.
struct TorchUnpickler {
    private let bytes: UnsafeRawBufferPointer
    private var position = 0
    private var stack: [PickleValue] = []
    private var marks: [Int] = []
    private var memo: [Int: PickleValue] = [:]
    private var containers: [AnyObject] = []

    /// Nesting deeper than this is no checkpoint (state dicts are two levels deep); the limit
    /// keeps a hostile pickle from piling up marks.
    static let maxMarks = 10_000
    /// Tensor arguments nest three tuples deep.
    static let maxTupleDepth = 64

    init(_ bytes: UnsafeRawBufferPointer) { self.bytes = bytes }

    /// Reads the object the pickle describes and hands it to `body`; the object lives only for
    /// that call, after which every list and dict it made is emptied.
    static func load<T>(_ bytes: UnsafeRawBufferPointer, _ body: (PickleValue) throws -> T) throws -> T {
        var reader = TorchUnpickler(bytes)
        defer { reader.tearDown() }
        return try body(try reader.run())
    }

    /// Empties every container without recursion: each one is still held by `containers` when
    /// its items go, so no release cascades.
    private mutating func tearDown() {
        stack.removeAll()
        memo.removeAll()
        for c in containers {
            if let l = c as? PickleList { l.items.removeAll() } else if let d = c as? PickleDict { d.items.removeAll() }
        }
        containers.removeAll()
    }

    private mutating func run() throws -> PickleValue {
        while true {
            let at = position
            let op = try byte()
            switch op {
            case 0x80: // PROTO
                let version = try byte()
                guard (2...5).contains(version) else { throw PickleError("pickle protocol \(version) is not one torch.save writes") }
            case 0x95: // FRAME: a length hint, the frame's opcodes follow inline
                _ = try take(8)
            case 0x2E: // STOP
                guard let result = stack.popLast(), stack.isEmpty, marks.isEmpty else {
                    throw PickleError("pickle ends with \(stack.count) values on its stack, expected one")
                }
                return result
            case 0x28: // MARK
                guard marks.count < Self.maxMarks else { throw PickleError("pickle nests more than \(Self.maxMarks) levels") }
                marks.append(stack.count)
            case 0x7D: stack.append(newDict())                      // EMPTY_DICT
            case 0x5D: // EMPTY_LIST
                let l = PickleList(); containers.append(l); stack.append(.list(l))
            case 0x29: stack.append(try tuple([]))                  // EMPTY_TUPLE
            case 0x74: stack.append(try tuple(try popMark()))       // TUPLE
            case 0x85: stack.append(try tuple(try pop(1)))          // TUPLE1
            case 0x86: stack.append(try tuple(try pop(2)))          // TUPLE2
            case 0x87: stack.append(try tuple(try pop(3)))          // TUPLE3
            case 0x4E: stack.append(.none)                          // NONE
            case 0x88: stack.append(.bool(true))                    // NEWTRUE
            case 0x89: stack.append(.bool(false))                   // NEWFALSE
            case 0x4B: stack.append(.int(Int(try byte())))          // BININT1
            case 0x4D: stack.append(.int(Int(try unsigned(2))))     // BININT2
            case 0x4A: stack.append(.int(Int(Int32(truncatingIfNeeded: try unsigned(4))))) // BININT
            case 0x8A: stack.append(.int(try long(Int(try byte())))) // LONG1
            case 0x8B: stack.append(.int(try long(Int(try unsigned(4))))) // LONG4
            case 0x47: // BINFLOAT: big-endian IEEE double
                let raw = try take(8).reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
                stack.append(.float(Double(bitPattern: raw)))
            case 0x8C: stack.append(.string(try text(Int(try byte()))))      // SHORT_BINUNICODE
            case 0x58: stack.append(.string(try text(Int(try unsigned(4))))) // BINUNICODE
            case 0x8D: stack.append(.string(try text(try length(8))))        // BINUNICODE8
            case 0x71: try put(Int(try byte()))                     // BINPUT
            case 0x72: try put(Int(try unsigned(4)))                // LONG_BINPUT
            case 0x94: try put(memo.count)                          // MEMOIZE
            case 0x68: try get(Int(try byte()))                     // BINGET
            case 0x6A: try get(Int(try unsigned(4)))                // LONG_BINGET
            case 0x30: _ = try pop(1)                               // POP
            case 0x31: _ = try popMark()                            // POP_MARK
            case 0x32: stack.append(try top())                      // DUP
            case 0x61: // APPEND
                let item = try pop(1)[0]
                try list(at: stack.count - 1).items.append(item)
            case 0x65: // APPENDS
                let items = try popMark()
                try list(at: stack.count - 1).items.append(contentsOf: items)
            case 0x73: // SETITEM
                let pair = try pop(2)
                try dict(at: stack.count - 1).items.append((pair[0], pair[1]))
            case 0x75: // SETITEMS
                let items = try popMark()
                guard items.count % 2 == 0 else { throw PickleError("SETITEMS with an odd number of values") }
                let target = try dict(at: stack.count - 1)
                for i in stride(from: 0, to: items.count, by: 2) { target.items.append((items[i], items[i + 1])) }
            case 0x63: // GLOBAL: "module\nname\n"
                let module = try line(), name = try line()
                stack.append(.global(try allowed(module, name)))
            case 0x93: // STACK_GLOBAL
                let pair = try pop(2)
                guard case .string(let module) = pair[0], case .string(let name) = pair[1] else {
                    throw PickleError("STACK_GLOBAL needs two strings, got \(pair[0].kind) and \(pair[1].kind)")
                }
                stack.append(.global(try allowed(module, name)))
            case 0x51: // BINPERSID: torch's ('storage', StorageType, key, location, numel)
                stack.append(.storage(try storage(pop(1)[0])))
            case 0x52: // REDUCE
                let pair = try pop(2)
                stack.append(try reduce(pair[0], pair[1]))
            case 0x62: // BUILD: state on an OrderedDict (a state dict's `_metadata`) is dropped
                let state = try pop(1)[0]
                switch (try top(), state) {
                case (.dict, _), (.tensor, .none), (.tensor, .dict), (.tensor, .tuple): break
                case (let target, _): throw PickleError("BUILD on a \(target.kind) is not allowed")
                }
            default:
                throw PickleError(String(format: "unsupported pickle opcode 0x%02X at byte %d", op, at))
            }
        }
    }

    // MARK: reading bytes

    private mutating func byte() throws -> UInt8 {
        guard position < bytes.count else { throw PickleError("pickle is truncated at byte \(position)") }
        defer { position += 1 }
        return bytes[position]
    }

    private mutating func take(_ n: Int) throws -> UnsafeRawBufferPointer {
        guard n >= 0, n <= bytes.count - position else {
            throw PickleError("pickle is truncated: \(n) bytes needed at byte \(position), \(bytes.count - position) left")
        }
        defer { position += n }
        return UnsafeRawBufferPointer(rebasing: bytes[position..<(position + n)])
    }

    /// A little-endian unsigned integer of `n` bytes.
    private mutating func unsigned(_ n: Int) throws -> UInt64 {
        try take(n).reversed().reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
    }

    private mutating func length(_ n: Int) throws -> Int {
        let value = try unsigned(n)
        guard value <= UInt64(bytes.count) else { throw PickleError("length \(value) at byte \(position - n) runs past the pickle") }
        return Int(value)
    }

    /// LONG1/LONG4: little-endian two's complement; wider than 64 bits is no tensor size.
    private mutating func long(_ n: Int) throws -> Int {
        let digits = try take(n)
        guard n <= 8 else { throw PickleError("integer of \(n) bytes at byte \(position - n) is too large") }
        guard n > 0 else { return 0 }
        var value = UInt64(0)
        for (i, b) in digits.enumerated() { value |= UInt64(b) << (8 * UInt64(i)) }
        if n < 8, digits[n - 1] & 0x80 != 0 { value |= ~UInt64(0) << (8 * UInt64(n)) }   // sign-extend
        return Int(Int64(bitPattern: value))
    }

    private mutating func text(_ n: Int) throws -> String {
        let raw = try take(n)
        guard let s = String(validating: raw, as: UTF8.self) else { throw PickleError("string at byte \(position - n) is not UTF-8") }
        return s
    }

    /// A newline-terminated ASCII line (GLOBAL's module and name).
    private mutating func line() throws -> String {
        let start = position
        while position < bytes.count, bytes[position] != 0x0A {
            guard position - start < 256 else { throw PickleError("GLOBAL name at byte \(start) is too long") }
            position += 1
        }
        guard position < bytes.count else { throw PickleError("pickle is truncated in a GLOBAL name at byte \(start)") }
        let s = String(decoding: UnsafeRawBufferPointer(rebasing: bytes[start..<position]), as: UTF8.self)
        position += 1
        return s
    }

    // MARK: the stack

    private func top() throws -> PickleValue {
        guard let v = stack.last, stack.count > (marks.last ?? 0) else { throw PickleError("pickle stack underflow at byte \(position - 1)") }
        return v
    }

    private mutating func pop(_ n: Int) throws -> [PickleValue] {
        guard stack.count - n >= (marks.last ?? 0) else { throw PickleError("pickle stack underflow at byte \(position - 1)") }
        defer { stack.removeLast(n) }
        return Array(stack[(stack.count - n)...])
    }

    private mutating func popMark() throws -> [PickleValue] {
        guard let mark = marks.popLast() else { throw PickleError("pickle has no MARK for the opcode at byte \(position - 1)") }
        defer { stack.removeLast(stack.count - mark) }
        return Array(stack[mark...])
    }

    private mutating func put(_ index: Int) throws { memo[index] = try top() }

    private mutating func newDict() -> PickleValue {
        let d = PickleDict(); containers.append(d); return .dict(d)
    }

    private func tuple(_ items: [PickleValue]) throws -> PickleValue {
        var depth = 1
        for case .tuple(let inner) in items { depth = max(depth, inner.depth + 1) }
        guard depth <= Self.maxTupleDepth else { throw PickleError("pickle nests tuples more than \(Self.maxTupleDepth) deep") }
        return .tuple(PickleTuple(items, depth: depth))
    }

    private mutating func get(_ index: Int) throws {
        guard let v = memo[index] else { throw PickleError("pickle reads memo slot \(index), never written") }
        stack.append(v)
    }

    private func list(at index: Int) throws -> PickleList {
        guard index >= (marks.last ?? 0), index >= 0, case .list(let l) = stack[index] else {
            throw PickleError("APPEND to something that is not a list at byte \(position - 1)")
        }
        return l
    }

    private func dict(at index: Int) throws -> PickleDict {
        guard index >= (marks.last ?? 0), index >= 0, case .dict(let d) = stack[index] else {
            throw PickleError("SETITEM on something that is not a dict at byte \(position - 1)")
        }
        return d
    }

    // MARK: the allow-list

    private func allowed(_ module: String, _ name: String) throws -> TorchGlobal {
        guard let g = TorchGlobal(module: module, name: name) else {
            // Protocol 2 spells Python 3's builtins as Python 2's `__builtin__`; name it as users know it.
            let shown = module == "__builtin__" ? "builtins" : module
            throw PickleError("refusing global '\(shown).\(name)': only tensors, storages and OrderedDict may appear in a checkpoint")
        }
        return g
    }

    private func storage(_ pid: PickleValue) throws -> TorchStorageRef {
        guard case .tuple(let tuple) = pid, case let t = tuple.items, t.count == 5, case .string("storage") = t[0] else {
            throw PickleError("persistent id is not a ('storage', type, key, location, count) tuple")
        }
        guard case .global(.storage(let dtype)) = t[1] else { throw PickleError("persistent id names no storage type") }
        guard case .string(let key) = t[2], !key.isEmpty, key.utf8.count <= 64, !key.contains("/") else {
            throw PickleError("storage key is not a plain name")
        }
        guard case .string = t[3] else { throw PickleError("storage '\(key)': location is not a string") }
        guard case .int(let count) = t[4], count >= 0 else { throw PickleError("storage '\(key)': element count is not a non-negative integer") }
        return TorchStorageRef(key: key, dtype: dtype, count: count)
    }

    /// REDUCE applies only the tensor-rebuilding functions and OrderedDict(); nothing is called,
    /// the arguments are checked and turned into a record.
    private mutating func reduce(_ callable: PickleValue, _ arguments: PickleValue) throws -> PickleValue {
        guard case .global(let g) = callable else { throw PickleError("REDUCE of a \(callable.kind), not an allowed function") }
        guard case .tuple(let args) = arguments else { throw PickleError("REDUCE arguments are a \(arguments.kind), not a tuple") }
        return try apply(g, args.items)
    }

    private mutating func apply(_ g: TorchGlobal, _ args: [PickleValue]) throws -> PickleValue {
        switch g {
        case .orderedDict:
            guard args.isEmpty else { throw PickleError("OrderedDict with arguments is not allowed") }
            return newDict()
        case .rebuildTensor:
            return .tensor(try tensor(args))
        case .rebuildParameter, .rebuildParameterWithState:
            // (data, requires_grad, backward_hooks[, state]): the parameter is its data.
            guard args.count == (g == .rebuildParameter ? 3 : 4), case .tensor = args[0] else {
                throw PickleError("_rebuild_parameter takes a tensor, requires_grad and hooks")
            }
            return args[0]
        case .rebuildFromType:
            // (func, type, func_args, state): a plain Tensor or Parameter rebuilt by an allowed function.
            guard args.count == 4, case .global(let function) = args[0], case .global(let type) = args[1],
                  type == .tensorClass || type == .parameterClass, case .tuple(let inner) = args[2] else {
                throw PickleError("_rebuild_from_type_v2 of anything but a plain tensor is not allowed")
            }
            guard function == .rebuildTensor || function == .rebuildParameter || function == .rebuildParameterWithState else {
                throw PickleError("_rebuild_from_type_v2 of a function that does not rebuild a tensor")
            }
            return try apply(function, inner.items)
        case .tensorClass, .parameterClass, .storage:
            throw PickleError("REDUCE of a class is not allowed")
        }
    }

    /// `_rebuild_tensor_v2(storage, offset, size, stride, requires_grad, backward_hooks[, metadata])`.
    /// Offsets, sizes and strides are checked against the storage here; the storage's record
    /// length is checked by the archive reader.
    private func tensor(_ args: [PickleValue]) throws -> TorchTensorRecord {
        guard args.count == 6 || args.count == 7 else { throw PickleError("_rebuild_tensor_v2 takes 6 or 7 arguments, got \(args.count)") }
        guard case .storage(let storage) = args[0] else { throw PickleError("_rebuild_tensor_v2: first argument is a \(args[0].kind), not a storage") }
        guard case .int(let offset) = args[1], offset >= 0 else { throw PickleError("_rebuild_tensor_v2: storage offset is not a non-negative integer") }
        let shape = try ints(args[2], "size"), strides = try ints(args[3], "stride")
        guard shape.count == strides.count, shape.count <= 16 else {
            throw PickleError("_rebuild_tensor_v2: size \(shape) and stride \(strides) do not match")
        }
        guard case .bool = args[4] else { throw PickleError("_rebuild_tensor_v2: requires_grad is not a bool") }
        // The last element the view touches must lie inside the storage.
        var elements = 1, last = offset
        for (size, stride) in zip(shape, strides) {
            guard size >= 0, stride >= 0 else { throw PickleError("_rebuild_tensor_v2: negative size or stride in \(shape) / \(strides)") }
            let (e, o1) = elements.multipliedReportingOverflow(by: size)
            guard !o1 else { throw PickleError("_rebuild_tensor_v2: size \(shape) is too large") }
            elements = e
        }
        // A view with more elements than its storage (stride 0 broadcasting) is no weight, and
        // gathering it could ask for any amount of memory.
        guard elements <= storage.count else {
            throw PickleError("tensor of size \(shape) has more elements than its storage (\(storage.count))")
        }
        if elements > 0 {
            for (size, stride) in zip(shape, strides) {
                let (span, o1) = (size - 1).multipliedReportingOverflow(by: stride)
                let (l, o2) = last.addingReportingOverflow(span)
                guard !o1, !o2 else { throw PickleError("_rebuild_tensor_v2: stride \(strides) is too large") }
                last = l
            }
            guard last < storage.count else {
                throw PickleError("tensor of size \(shape), stride \(strides), offset \(offset) reaches element \(last) of a storage of \(storage.count)")
            }
        }
        return TorchTensorRecord(storage: storage, offset: offset, shape: shape, strides: strides)
    }

    private func ints(_ v: PickleValue, _ what: String) throws -> [Int] {
        guard case .tuple(let tuple) = v else { throw PickleError("_rebuild_tensor_v2: \(what) is a \(v.kind), not a tuple") }
        return try tuple.items.map {
            guard case .int(let i) = $0 else { throw PickleError("_rebuild_tensor_v2: \(what) holds a \($0.kind)") }
            return i
        }
    }
}
