import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A spool operation that failed, with the path and the system's reason. Never contains secrets.
public struct SpoolError: Error, CustomStringConvertible, Sendable {
    public enum Kind: Sendable, Equatable {
        case io
        /// fsync failed: the kernel may have dropped dirty pages, so nothing written since the last
        /// successful fsync can be trusted. The spool stops acknowledging until restarted.
        case fsyncFailed
        case diskFull
        case corrupt
        case invalidWAL
        case notContiguous
        case locked
        case mismatch
        /// The spool ends below a position it acknowledged (see `SystemSpool`'s recovery): it is not started.
        case acknowledgedWALMissing
    }

    public let kind: Kind
    public let message: String

    public init(_ kind: Kind, _ message: String) {
        self.kind = kind
        self.message = message
    }

    public var description: String { message }

    static func errno(_ what: String, _ path: String, _ code: Int32 = Glibc.errno) -> SpoolError {
        let reason = String(cString: strerror(code))
        let kind: Kind = code == ENOSPC || code == EDQUOT ? .diskFull : .io
        var hint = ""
        if code == EACCES || code == EPERM { hint = " (hint: check the spool directory's owner and mode)" }
        if kind == .diskFull { hint = " (hint: free space on the spool's filesystem; walship resumes by itself)" }
        return SpoolError(kind, "could not \(what) \"\(path)\": \(reason)\(hint)")
    }
}

/// Remembers the first failed fsync of a file that gates acknowledgements (a journal, a timeline switch, the
/// local buffer). From then on every such fsync through the same `FileIO` fails with it: Linux reports a
/// writeback error once and drops the dirty pages, so a retried fsync would succeed for data that never
/// reached the disk. Only re-reading the files in a new spool object (a restart or `Spool.reopen`) clears it.
public final class SyncFailureLatch: Sendable {
    private let failure = Mutex<SpoolError?>(nil)

    public init() {}

    public var error: SpoolError? { failure.withLock { $0 } }

    func check() throws {
        if let error = failure.withLock({ $0 }) { throw error }
    }

    func record(_ error: SpoolError) {
        failure.withLock { if $0 == nil { $0 = error } }
    }
}

/// The spool's way to the file system: every call goes through `fs`, and every fsync through `sync`, the one
/// place that enforces the rule after a failed fsync (see `SyncFailureLatch`). Every durability step names
/// the crash it protects against.
public struct FileIO: Sendable {
    public let fs: any FileSystem
    /// Shared by the files of one system's spool; nil for read-only users.
    public let latch: SyncFailureLatch?

    public init(_ fs: any FileSystem = PosixFileSystem(), latch: SyncFailureLatch? = nil) {
        self.fs = fs
        self.latch = latch
    }

    /// The real file system, for readers that change nothing (`restore-wal`, the standby endpoint's reads).
    public static let posix = FileIO(PosixFileSystem())

    /// The same file system with a latch of its own: one system's spool.
    func latched() -> FileIO { FileIO(fs, latch: SyncFailureLatch()) }

    /// Whether a retry of the fsync may be trusted: true only where the retry writes the data again into a
    /// new file (a segment's completion from the fsynced journal); false where an acknowledgement follows.
    enum SyncRetry {
        case gatesAcknowledgement
        case rewrittenOnRetry
    }

    func open(_ path: String, _ flags: Int32, mode: mode_t = 0o640) throws -> Int32 {
        do { return try fs.open(path, flags: flags, mode: mode) } catch { throw SpoolError.errno("open", path, error.code) }
    }

    func close(_ fd: Int32) { fs.close(fd) }

    func pwriteAll(_ fd: Int32, _ bytes: UnsafeRawBufferPointer, at offset: Int, path: String) throws {
        var done = 0
        while done < bytes.count {
            let n: Int
            do { n = try fs.pwrite(fd, UnsafeRawBufferPointer(rebasing: bytes[done...]), at: offset + done) } catch {
                throw SpoolError.errno("write", path, error.code)
            }
            // A zero-length write without an error means the filesystem is out of space.
            if n == 0 { throw SpoolError.errno("write", path, ENOSPC) }
            done += n
        }
    }

    /// `head` then `body` at `offset` in one system call (a journal record's header and its data); what a
    /// short write leaves goes the ordinary way.
    func pwriteAll(
        _ fd: Int32, _ head: UnsafeRawBufferPointer, _ body: UnsafeRawBufferPointer, at offset: Int,
        path: String
    ) throws {
        let written: Int
        do { written = try fs.pwrite(fd, head, body, at: offset) } catch { throw SpoolError.errno("write", path, error.code) }
        // Either rest may be empty; pwriteAll then writes nothing (and reports a write of 0 as a full disk).
        let headDone = min(written, head.count), bodyDone = written - headDone
        try pwriteAll(fd, UnsafeRawBufferPointer(rebasing: head[headDone...]), at: offset + headDone, path: path)
        try pwriteAll(fd, UnsafeRawBufferPointer(rebasing: body[bodyDone...]), at: offset + head.count + bodyDone, path: path)
    }

    func preadAll(_ fd: Int32, count: Int, at offset: Int, path: String) throws -> [UInt8] {
        var out = [UInt8](repeating: 0, count: count)
        var done = 0
        while done < count {
            let result = out.withUnsafeMutableBytes { buffer in
                Result { () throws(SystemCallError) in
                    try fs.pread(fd, into: UnsafeMutableRawBufferPointer(rebasing: buffer[done...]), at: offset + done)
                }
            }
            let n: Int
            switch result {
            case .success(let count): n = count
            case .failure(let error): throw SpoolError.errno("read", path, error.code)
            }
            if n == 0 { break }
            done += n
        }
        out.removeSubrange(done...)
        return out
    }

    func fileSize(_ fd: Int32, path: String) throws -> Int {
        do { return try fs.size(fd) } catch { throw SpoolError.errno("stat", path, error.code) }
    }

    /// The chokepoint of every fsync. After a failure nothing written since the last success is trusted, and
    /// where an acknowledgement follows, the latch keeps every later fsync of the spool failing.
    private func sync(_ what: String, _ path: String, _ retry: SyncRetry, _ call: () throws(SystemCallError) -> Void) throws {
        if retry == .gatesAcknowledgement { try latch?.check() }
        do { try call() } catch {
            // Any fsync failure counts, ENOSPC included: the kernel may already have dropped the dirty pages.
            let failure = SpoolError(.fsyncFailed, SpoolError.errno(what, path, error.code).message)
            if retry == .gatesAcknowledgement { latch?.record(failure) }
            throw failure
        }
    }

    /// Data (and the size, if it changed) reaches the disk.
    func syncData(_ fd: Int32, path: String, retry: SyncRetry = .gatesAcknowledgement) throws {
        try sync("fsync", path, retry) { () throws(SystemCallError) in try fs.fdatasync(fd) }
    }

    func syncFile(_ fd: Int32, path: String, retry: SyncRetry = .gatesAcknowledgement) throws {
        try sync("fsync", path, retry) { () throws(SystemCallError) in try fs.fsync(fd) }
    }

    /// Makes creations, renames and unlinks in `path` survive a crash.
    func syncDirectory(_ path: String, retry: SyncRetry = .gatesAcknowledgement) throws {
        try sync("fsync directory", path, retry) { () throws(SystemCallError) in try fs.fsyncDirectory(path) }
    }

    /// Reserves real blocks so later writes and fdatasync need no allocation (the pre-padding trick of pg_receivewal).
    /// On ext4 and XFS the blocks stay unwritten until first written (see `ZeroFill` in the journal).
    func preallocate(_ fd: Int32, bytes: Int, path: String) throws {
        do { try fs.allocate(fd, bytes: bytes) } catch { throw SpoolError.errno("preallocate", path, error.code) }
    }

    /// Writes zeros over `range` of the file.
    func writeZeros(_ fd: Int32, _ range: Range<Int>, path: String) throws {
        var offset = range.lowerBound
        while offset < range.upperBound {
            let n = min(range.upperBound - offset, Self.zeros.count)
            try Self.zeros.withUnsafeBytes {
                try pwriteAll(fd, UnsafeRawBufferPointer(rebasing: $0[0..<n]), at: offset, path: path)
            }
            offset += n
        }
    }

    private static let zeros = [UInt8](repeating: 0, count: 256 << 10)

    func truncate(_ fd: Int32, to bytes: Int, path: String) throws {
        do { try fs.truncate(fd, to: bytes) } catch { throw SpoolError.errno("truncate", path, error.code) }
    }

    func rename(_ from: String, to: String) throws {
        do { try fs.rename(from, to: to) } catch { throw SpoolError.errno("rename to", to, error.code) }
    }

    /// temp file → fsync → rename → fsync directory: after a crash the file is either absent or whole.
    func writeAtomically(
        _ bytes: UnsafeRawBufferPointer, to path: String, directory: String, mode: mode_t = 0o640,
        retry: SyncRetry = .gatesAcknowledgement
    ) throws {
        let tmp = path + ".tmp"
        let fd = try open(tmp, O_WRONLY | O_CREAT | O_TRUNC, mode: mode)
        do {
            try pwriteAll(fd, bytes, at: 0, path: tmp)
            try syncFile(fd, path: tmp, retry: retry)
        } catch {
            close(fd)
            try? fs.unlink(tmp)
            throw error
        }
        close(fd)
        try rename(tmp, to: path)
        try syncDirectory(directory, retry: retry)
    }

    func readWholeFile(_ path: String, maxBytes: Int) throws -> [UInt8] {
        let fd = try open(path, O_RDONLY)
        defer { close(fd) }
        let size = try fileSize(fd, path: path)
        guard size <= maxBytes else {
            throw SpoolError(.corrupt, "\"\(path)\" is \(size) bytes, more than the \(maxBytes) expected")
        }
        return try preadAll(fd, count: size, at: 0, path: path)
    }

    func exists(_ path: String) -> Bool { fs.exists(path) }

    func isDirectory(_ path: String) -> Bool { fs.isDirectory(path) }

    /// Creates a directory and makes its entry durable in the parent (fsync of the parent): WAL fsynced into a
    /// directory whose own entry a crash takes away would be lost with it.
    func makeDirectory(_ path: String, mode: mode_t = 0o750, retry: SyncRetry = .gatesAcknowledgement) throws {
        if isDirectory(path) { return }
        do { try fs.mkdir(path, mode: mode) } catch {
            guard error.code == EEXIST else { throw SpoolError.errno("create directory", path, error.code) }
            return
        }
        try syncDirectory(parentDirectory(of: path), retry: retry)
    }

    func listDirectory(_ path: String) throws -> [String] {
        do { return try fs.list(path).sorted() } catch { throw SpoolError.errno("list directory", path, error.code) }
    }

    /// Removes a directory of plain files (a backup), its files first.
    func removeDirectory(_ path: String) throws {
        for name in try listDirectory(path) { try remove(path + "/" + name) }
        do { try fs.rmdir(path) } catch {
            guard error.code == ENOENT else { throw SpoolError.errno("remove directory", path, error.code) }
        }
    }

    func remove(_ path: String) throws {
        do { try fs.unlink(path) } catch {
            guard error.code == ENOENT else { throw SpoolError.errno("remove", path, error.code) }
        }
    }

    /// Appends `line` to the file at `path` and makes it durable; the first time it creates the file, its
    /// directory entry too. For audit logs, which must outlive a crash as much as the WAL they describe.
    func appendDurably(_ line: [UInt8], to path: String) throws {
        let created = !exists(path)
        let fd = try open(path, O_WRONLY | O_CREAT | O_APPEND)
        defer { close(fd) }
        try line.withUnsafeBytes { try pwriteAll(fd, $0, at: try fileSize(fd, path: path), path: path) }
        try syncFile(fd, path: path)
        if created { try syncDirectory(parentDirectory(of: path)) }
    }

    func capacity(of path: String) -> (free: UInt64, total: UInt64)? { fs.capacity(path) }
}

func parentDirectory(of path: String) -> String {
    guard let slash = path.lastIndex(of: "/") else { return "." }
    return slash == path.startIndex ? "/" : String(path[..<slash])
}

/// The same calls on the real file system, for code that reads a spool without owning it.
extension FileIO {
    static func open(_ path: String, _ flags: Int32, mode: mode_t = 0o640) throws -> Int32 {
        try posix.open(path, flags, mode: mode)
    }
    static func close(_ fd: Int32) { posix.close(fd) }
    static func preadAll(_ fd: Int32, count: Int, at offset: Int, path: String) throws -> [UInt8] {
        try posix.preadAll(fd, count: count, at: offset, path: path)
    }
    static func fileSize(_ fd: Int32, path: String) throws -> Int { try posix.fileSize(fd, path: path) }
    static func readWholeFile(_ path: String, maxBytes: Int) throws -> [UInt8] {
        try posix.readWholeFile(path, maxBytes: maxBytes)
    }
    static func exists(_ path: String) -> Bool { posix.exists(path) }
    static func isDirectory(_ path: String) -> Bool { posix.isDirectory(path) }
    static func listDirectory(_ path: String) throws -> [String] { try posix.listDirectory(path) }
    static func remove(_ path: String) throws { try posix.remove(path) }
    static func removeDirectory(_ path: String) throws { try posix.removeDirectory(path) }
    static func makeDirectory(_ path: String, mode: mode_t = 0o750) throws { try posix.makeDirectory(path, mode: mode) }
    static func syncDirectory(_ path: String) throws { try posix.syncDirectory(path) }
    static func writeAtomically(_ bytes: UnsafeRawBufferPointer, to path: String, directory: String, mode: mode_t = 0o640) throws
    {
        try posix.writeAtomically(bytes, to: path, directory: directory, mode: mode)
    }
}
