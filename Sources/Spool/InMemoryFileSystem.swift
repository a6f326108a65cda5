import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// A file system in memory that remembers what an fsync made durable, for tests and the fault simulation.
///
/// Writes, creations, renames and removals change what readers see at once, as the page cache does; only
/// `fdatasync`/`fsync` of a file, and `fsyncDirectory` of a directory for its entries, make them survive
/// `crash()`, which drops everything else, directory entries included. A failed fsync behaves as Linux's
/// does since 4.13: the error is reported once, the dirty pages are dropped (they never reach the disk), and
/// the next fsync of the same file succeeds. Any call can be made to fail through `faults`.
public final class InMemoryFileSystem: FileSystem {
    /// One call, as `faults` sees it: what it does and to which path.
    public struct Operation: Sendable, CustomStringConvertible {
        public enum Kind: String, Sendable, CaseIterable {
            case open, write, read, fdatasync, fsync, fsyncDirectory, allocate, truncate, rename, unlink, mkdir, rmdir, list
        }
        public var kind: Kind
        public var path: String
        public var description: String { "\(kind.rawValue) \(path)" }
    }

    public enum Fault: Sendable, Equatable {
        /// The call fails with this errno and changes nothing.
        case fail(Int32)
        /// A write that stores only this many bytes (and says so).
        case shortWrite(Int)
    }

    /// A class, so a write changes the bytes in place instead of copying the file out of the table and back.
    private final class FileNode {
        var data: [UInt8] = []
        /// What a crash leaves of the file.
        var durable: [UInt8] = []
        /// Byte ranges written since the last fsync; `sizeChanged` when its length changed.
        var dirty: [Range<Int>] = []
        var sizeChanged = false
    }

    private struct DirectoryNode {
        var entries: [String: Int] = [:]
        var durableEntries: [String: Int] = [:]
    }

    private enum Node {
        case file(FileNode)
        case directory(DirectoryNode)
    }

    private struct OpenFile {
        var node: Int
        var path: String
        var append: Bool
        var lock: String?
    }

    private struct State {
        var nodes: [Int: Node] = [0: .directory(DirectoryNode())]
        var nextNode = 1
        var open: [Int32: OpenFile] = [:]
        var nextFD: Int32 = 3
        var locks: Set<String> = []
        var faults: (@Sendable (Operation) -> Fault?)?
        var totalBytes: UInt64 = 1 << 40
        var calls: [Operation.Kind: Int] = [:]
    }

    private let state = Mutex(State())

    public init() {}

    /// Decides, for every call, whether it fails; nil lets all succeed.
    public func setFaults(_ decide: (@Sendable (Operation) -> Fault?)?) {
        state.withLock { $0.faults = decide }
    }

    /// The size `capacity` reports.
    public func setTotalBytes(_ bytes: UInt64) { state.withLock { $0.totalBytes = bytes } }

    /// How many calls of a kind were made (fsync counts for tests).
    public func callCount(_ kind: Operation.Kind) -> Int { state.withLock { $0.calls[kind] ?? 0 } }

    /// The machine loses power: every byte and directory entry not made durable is gone, and every open file
    /// and lock with it. The objects that had files open must not be used again.
    public func crash() {
        state.withLock { s in
            var kept: [Int: Node] = [:]
            var pending = [0]
            while let id = pending.popLast() {
                guard kept[id] == nil, let node = s.nodes[id] else { continue }
                switch node {
                case .directory(var dir):
                    dir.entries = dir.durableEntries
                    kept[id] = .directory(dir)
                    pending.append(contentsOf: dir.entries.values)
                case .file(let file):
                    file.data = file.durable
                    file.dirty = []
                    file.sizeChanged = false
                    kept[id] = .file(file)
                }
            }
            s.nodes = kept
            s.open = [:]
            s.locks = []
        }
    }

    /// The contents of a file as a reader sees them now, or nil.
    public func contents(_ path: String) -> [UInt8]? {
        state.withLock { s in
            guard let id = Self.resolve(path, in: s), case .file(let file) = s.nodes[id] else { return nil }
            return file.data
        }
    }

    /// Replaces a file's contents, durably (a test damaging the disk).
    public func overwrite(_ path: String, with bytes: [UInt8]) {
        state.withLock { s in
            guard let id = Self.resolve(path, in: s), case .file(let file) = s.nodes[id] else { return }
            file.data = bytes
            file.durable = bytes
            file.dirty = []
            s.nodes[id] = .file(file)
        }
    }

    // MARK: - FileSystem

    public func open(_ path: String, flags: Int32, mode: mode_t) throws(SystemCallError) -> Int32 {
        try state.withLock { s throws(SystemCallError) in
            try Self.fault(.open, path, &s)
            var id = Self.resolve(path, in: s)
            if id == nil {
                guard flags & O_CREAT != 0 else { throw SystemCallError(ENOENT) }
                let (parent, name) = try Self.parent(of: path, in: s)
                let new = s.nextNode
                s.nextNode += 1
                s.nodes[new] = .file(FileNode())
                Self.updateDirectory(parent, in: &s) { $0.entries[name] = new }
                id = new
            } else if flags & O_CREAT != 0 && flags & O_EXCL != 0 {
                throw SystemCallError(EEXIST)
            }
            guard case .file(let file) = s.nodes[id!] else { throw SystemCallError(EISDIR) }
            if flags & O_TRUNC != 0 && !file.data.isEmpty {
                file.data = []
                file.sizeChanged = true
                s.nodes[id!] = .file(file)
            }
            let fd = s.nextFD
            s.nextFD += 1
            s.open[fd] = OpenFile(node: id!, path: path, append: flags & O_APPEND != 0)
            return fd
        }
    }

    public func close(_ fd: Int32) {
        state.withLock { s in
            if let lock = s.open.removeValue(forKey: fd)?.lock { s.locks.remove(lock) }
        }
    }

    public func pwrite(_ fd: Int32, _ bytes: UnsafeRawBufferPointer, at offset: Int) throws(SystemCallError) -> Int {
        try write(fd, [bytes], at: offset)
    }

    public func pwrite(
        _ fd: Int32, _ head: UnsafeRawBufferPointer, _ body: UnsafeRawBufferPointer, at offset: Int
    )
        throws(SystemCallError) -> Int
    {
        try write(fd, [head, body], at: offset)
    }

    private func write(_ fd: Int32, _ pieces: [UnsafeRawBufferPointer], at offset: Int) throws(SystemCallError) -> Int {
        try state.withLock { s throws(SystemCallError) in
            guard let handle = s.open[fd], case .file(let file) = s.nodes[handle.node] else { throw SystemCallError(EBADF) }
            var total = pieces.reduce(0) { $0 + $1.count }
            s.calls[.write, default: 0] += 1
            switch s.faults?(Operation(kind: .write, path: handle.path)) {
            case .fail(let code)?: throw SystemCallError(code)
            case .shortWrite(let n)?: total = min(total, max(0, n))
            case nil: break
            }
            let start = handle.append ? file.data.count : offset
            if start + total > file.data.count {
                file.data.append(contentsOf: zeros(start + total - file.data.count))
                file.sizeChanged = true
            }
            var at = start, left = total
            for piece in pieces where left > 0 {
                let n = min(piece.count, left)
                file.data.withUnsafeMutableBytes {
                    $0.baseAddress!.advanced(by: at).copyMemory(from: piece.baseAddress!, byteCount: n)
                }
                at += n
                left -= n
            }
            if total > 0 { file.dirty.append(start..<start + total) }
            s.nodes[handle.node] = .file(file)
            return total
        }
    }

    public func pread(_ fd: Int32, into buffer: UnsafeMutableRawBufferPointer, at offset: Int) throws(SystemCallError) -> Int {
        try state.withLock { s throws(SystemCallError) in
            guard let handle = s.open[fd], case .file(let file) = s.nodes[handle.node] else { throw SystemCallError(EBADF) }
            try Self.fault(.read, handle.path, &s)
            guard offset < file.data.count else { return 0 }
            let n = min(buffer.count, file.data.count - offset)
            file.data.withUnsafeBytes { buffer.baseAddress!.copyMemory(from: $0.baseAddress!.advanced(by: offset), byteCount: n) }
            return n
        }
    }

    public func size(_ fd: Int32) throws(SystemCallError) -> Int {
        try state.withLock { s throws(SystemCallError) in
            guard let handle = s.open[fd], case .file(let file) = s.nodes[handle.node] else { throw SystemCallError(EBADF) }
            return file.data.count
        }
    }

    public func fdatasync(_ fd: Int32) throws(SystemCallError) { try sync(fd, .fdatasync) }
    public func fsync(_ fd: Int32) throws(SystemCallError) { try sync(fd, .fsync) }

    private func sync(_ fd: Int32, _ kind: Operation.Kind) throws(SystemCallError) {
        try state.withLock { s throws(SystemCallError) in
            guard let handle = s.open[fd], case .file(let file) = s.nodes[handle.node] else { throw SystemCallError(EBADF) }
            do throws(SystemCallError) {
                try Self.fault(kind, handle.path, &s)
            } catch {
                // The kernel drops the dirty pages and reports the error once: they never reach the disk.
                file.dirty = []
                file.sizeChanged = false
                s.nodes[handle.node] = .file(file)
                throw error
            }
            if file.sizeChanged || file.durable.count != file.data.count {
                if file.durable.count > file.data.count {
                    file.durable.removeSubrange(file.data.count...)
                } else {
                    file.durable.append(contentsOf: zeros(file.data.count - file.durable.count))
                }
            }
            for range in file.dirty {
                let clipped = range.clamped(to: 0..<file.data.count)
                guard !clipped.isEmpty else { continue }
                file.data.withUnsafeBytes { source in
                    file.durable.withUnsafeMutableBytes { target in
                        target.baseAddress!.advanced(by: clipped.lowerBound)
                            .copyMemory(from: source.baseAddress!.advanced(by: clipped.lowerBound), byteCount: clipped.count)
                    }
                }
            }
            file.dirty = []
            file.sizeChanged = false
            s.nodes[handle.node] = .file(file)
        }
    }

    public func fsyncDirectory(_ path: String) throws(SystemCallError) {
        try state.withLock { s throws(SystemCallError) in
            guard let id = Self.resolve(path, in: s), case .directory = s.nodes[id] else { throw SystemCallError(ENOENT) }
            try Self.fault(.fsyncDirectory, path, &s)
            Self.updateDirectory(id, in: &s) { $0.durableEntries = $0.entries }
        }
    }

    public func allocate(_ fd: Int32, bytes: Int) throws(SystemCallError) {
        try state.withLock { s throws(SystemCallError) in
            guard let handle = s.open[fd], case .file(let file) = s.nodes[handle.node] else { throw SystemCallError(EBADF) }
            try Self.fault(.allocate, handle.path, &s)
            if bytes > file.data.count {
                file.data.append(contentsOf: zeros(bytes - file.data.count))
                file.sizeChanged = true
                s.nodes[handle.node] = .file(file)
            }
        }
    }

    public func truncate(_ fd: Int32, to bytes: Int) throws(SystemCallError) {
        try state.withLock { s throws(SystemCallError) in
            guard let handle = s.open[fd], case .file(let file) = s.nodes[handle.node] else { throw SystemCallError(EBADF) }
            try Self.fault(.truncate, handle.path, &s)
            if bytes < file.data.count {
                file.data.removeSubrange(bytes...)
            } else {
                file.data.append(contentsOf: zeros(bytes - file.data.count))
            }
            file.sizeChanged = true
            s.nodes[handle.node] = .file(file)
        }
    }

    public func rename(_ from: String, to: String) throws(SystemCallError) {
        try state.withLock { s throws(SystemCallError) in
            try Self.fault(.rename, from, &s)
            guard let id = Self.resolve(from, in: s) else { throw SystemCallError(ENOENT) }
            let (oldParent, oldName) = try Self.parent(of: from, in: s)
            let (newParent, newName) = try Self.parent(of: to, in: s)
            if let existing = Self.resolve(to, in: s), case .directory(let dir) = s.nodes[existing], !dir.entries.isEmpty {
                throw SystemCallError(ENOTEMPTY)
            }
            Self.updateDirectory(oldParent, in: &s) { $0.entries.removeValue(forKey: oldName) }
            Self.updateDirectory(newParent, in: &s) { $0.entries[newName] = id }
        }
    }

    public func unlink(_ path: String) throws(SystemCallError) {
        try state.withLock { s throws(SystemCallError) in
            try Self.fault(.unlink, path, &s)
            guard let id = Self.resolve(path, in: s) else { throw SystemCallError(ENOENT) }
            guard case .file = s.nodes[id] else { throw SystemCallError(EISDIR) }
            let (parent, name) = try Self.parent(of: path, in: s)
            Self.updateDirectory(parent, in: &s) { $0.entries.removeValue(forKey: name) }
        }
    }

    public func mkdir(_ path: String, mode: mode_t) throws(SystemCallError) {
        try state.withLock { s throws(SystemCallError) in
            try Self.fault(.mkdir, path, &s)
            guard Self.resolve(path, in: s) == nil else { throw SystemCallError(EEXIST) }
            let (parent, name) = try Self.parent(of: path, in: s)
            let new = s.nextNode
            s.nextNode += 1
            s.nodes[new] = .directory(DirectoryNode())
            Self.updateDirectory(parent, in: &s) { $0.entries[name] = new }
        }
    }

    public func rmdir(_ path: String) throws(SystemCallError) {
        try state.withLock { s throws(SystemCallError) in
            try Self.fault(.rmdir, path, &s)
            guard let id = Self.resolve(path, in: s), case .directory(let dir) = s.nodes[id] else {
                throw SystemCallError(ENOENT)
            }
            guard dir.entries.isEmpty else { throw SystemCallError(ENOTEMPTY) }
            let (parent, name) = try Self.parent(of: path, in: s)
            Self.updateDirectory(parent, in: &s) { $0.entries.removeValue(forKey: name) }
        }
    }

    public func list(_ path: String) throws(SystemCallError) -> [String] {
        try state.withLock { s throws(SystemCallError) in
            try Self.fault(.list, path, &s)
            guard let id = Self.resolve(path, in: s), case .directory(let dir) = s.nodes[id] else {
                throw SystemCallError(ENOENT)
            }
            return Array(dir.entries.keys)
        }
    }

    public func exists(_ path: String) -> Bool { state.withLock { Self.resolve(path, in: $0) != nil } }

    public func isDirectory(_ path: String) -> Bool {
        state.withLock { s in
            guard let id = Self.resolve(path, in: s), case .directory = s.nodes[id] else { return false }
            return true
        }
    }

    public func isWritable(_ path: String) -> Bool { isDirectory(path) }

    public func lockExclusively(_ path: String) throws(SystemCallError) -> Int32 {
        let fd = try open(path, flags: O_RDWR | O_CREAT, mode: 0o640)
        return try state.withLock { s throws(SystemCallError) in
            guard !s.locks.contains(path) else {
                s.open.removeValue(forKey: fd)
                throw SystemCallError(EWOULDBLOCK)
            }
            s.locks.insert(path)
            s.open[fd]?.lock = path
            return fd
        }
    }

    public func diskUsage(_ path: String) -> UInt64 {
        state.withLock { s in
            guard let id = Self.resolve(path, in: s) else { return 0 }
            var total: UInt64 = 0
            var pending = [id]
            while let next = pending.popLast() {
                switch s.nodes[next] {
                case .file(let file)?: total += UInt64(file.data.count)
                case .directory(let dir)?: pending.append(contentsOf: dir.entries.values)
                case nil: break
                }
            }
            return total
        }
    }

    public func capacity(_ path: String) -> (free: UInt64, total: UInt64)? {
        let total = state.withLock { $0.totalBytes }
        let used = diskUsage("/")
        return (total - min(total, used), total)
    }

    // MARK: - Paths

    /// Zeros made in one call: appending a repeated element goes byte by byte in a debug build.
    private func zeros(_ count: Int) -> [UInt8] { [UInt8](repeating: 0, count: max(0, count)) }

    private static func components(_ path: String) -> [Substring] { path.split(separator: "/") }

    private static func resolve(_ path: String, in s: State) -> Int? {
        var id = 0
        for part in components(path) {
            guard case .directory(let dir) = s.nodes[id], let next = dir.entries[String(part)] else { return nil }
            id = next
        }
        return id
    }

    private static func parent(of path: String, in s: State) throws(SystemCallError) -> (Int, String) {
        var parts = components(path)
        guard let name = parts.popLast() else { throw SystemCallError(EINVAL) }
        guard let id = resolve("/" + parts.joined(separator: "/"), in: s), case .directory = s.nodes[id] else {
            throw SystemCallError(ENOENT)
        }
        return (id, String(name))
    }

    private static func updateDirectory(_ id: Int, in s: inout State, _ change: (inout DirectoryNode) -> Void) {
        guard case .directory(var dir) = s.nodes[id] else { return }
        change(&dir)
        s.nodes[id] = .directory(dir)
    }

    private static func fault(_ kind: Operation.Kind, _ path: String, _ s: inout State) throws(SystemCallError) {
        s.calls[kind, default: 0] += 1
        if case .fail(let code)? = s.faults?(Operation(kind: kind, path: path)) { throw SystemCallError(code) }
    }
}
