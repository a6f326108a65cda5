// Only in debug builds (the tests'): a release binary has no way to be told to fail its own storage.
#if DEBUG
#if canImport(Glibc)
import Glibc
#endif
import Synchronization

/// The real file system with faults a test asks for, so that the fault drills can fail a running
/// `walship receive`'s storage the way a sick disk does. The control file (named by
/// `WALSHIP_TEST_STORAGE_FAULTS`) holds lines `CALL ERRNO COUNT [PATH-SUFFIX]`, e.g. `fdatasync EIO 1 .partial`
/// (the next fdatasync of a journal fails with EIO) or `write ENOSPC 100000` (every write fails until the file
/// changes). CALL is write (both pwrites), fdatasync, fsync or allocate; ERRNO is EIO, ENOSPC or EDQUOT. Each
/// matching call consumes one of COUNT; writing the file anew replaces the faults, an empty file clears them.
public final class StorageFaultFileSystem: FileSystem {
    public static let environmentVariable = "WALSHIP_TEST_STORAGE_FAULTS"

    struct Fault {
        var call: String
        var code: Int32
        var remaining: Int
        var pathSuffix: String?
        var injected = 0
    }

    struct State {
        /// The control file as last read (inode, mtime, size): it is parsed again only when that changes.
        var signature: [Int] = []
        var faults: [Fault] = []
        /// Paths of open descriptors, for faults limited to some files (journals are renamed into place open).
        var paths: [Int32: String] = [:]
    }

    private let real = PosixFileSystem()
    private let controlFile: String
    private let report: @Sendable (String) -> Void
    private let state = Mutex(State())

    /// `report` hears of each fault injected and each control file read.
    public init(controlFile: String, report: @escaping @Sendable (String) -> Void) {
        self.controlFile = controlFile
        self.report = report
    }

    /// The file system the environment asks for: faults from its control file, or nil when the variable is unset.
    public static func fromEnvironment(report: @escaping @Sendable (String) -> Void) -> StorageFaultFileSystem? {
        guard let path = getenv(environmentVariable).map({ String(cString: $0) }), !path.isEmpty else { return nil }
        return StorageFaultFileSystem(controlFile: path, report: report)
    }

    /// Throws the errno of the first fault for `call` on `fd` that has calls left, consuming one.
    private func inject(_ call: String, _ fd: Int32?) throws(SystemCallError) {
        var message: String?
        let code: Int32? = state.withLock { state in
            message = reloadIfChanged(&state)
            let path = fd.flatMap { state.paths[$0] } ?? ""
            guard
                let index = state.faults.firstIndex(where: {
                    $0.call == call && $0.remaining > 0 && ($0.pathSuffix.map { path.hasSuffix($0) } ?? true)
                })
            else { return nil }
            state.faults[index].remaining -= 1
            state.faults[index].injected += 1
            let fault = state.faults[index]
            // Small counts are reported call by call; long ones (a full disk) at the first call and the last few.
            if fault.injected == 1 || fault.remaining < 3 {
                let injected = "injected \(call) error \(fault.code) on \"\(path)\" (\(fault.remaining) left)"
                message = message.map { $0 + "; " + injected } ?? injected
            }
            return fault.code
        }
        if let message { report(message) }
        if let code { throw SystemCallError(code) }
    }

    /// Reads the control file again if it changed; returns what it now says, for the report.
    private func reloadIfChanged(_ state: inout State) -> String? {
        var st = stat()
        let signature =
            stat(controlFile, &st) == 0
            ? [Int(st.st_ino), Int(st.st_mtim.tv_sec), Int(st.st_mtim.tv_nsec), Int(st.st_size)] : []
        guard signature != state.signature else { return nil }
        state.signature = signature
        state.faults = Self.parse(Self.read(controlFile))
        return "storage faults from \(controlFile): "
            + (state.faults.isEmpty
                ? "none"
                : state.faults.map {
                    "\($0.call) \($0.code) ×\($0.remaining)\($0.pathSuffix.map { " on *" + $0 } ?? "")"
                }.joined(separator: ", "))
    }

    private static func read(_ path: String) -> String {
        guard let file = fopen(path, "r") else { return "" }
        defer { fclose(file) }
        var text = ""
        var buffer = [CChar](repeating: 0, count: 512)
        while fgets(&buffer, Int32(buffer.count), file) != nil { text += String(cString: buffer) }
        return text
    }

    static func parse(_ text: String) -> [Fault] {
        let codes: [String: Int32] = ["EIO": EIO, "ENOSPC": ENOSPC, "EDQUOT": EDQUOT]
        return text.split(separator: "\n").compactMap { line in
            let fields = line.split(separator: " ").map(String.init)
            guard fields.count >= 3, ["write", "fdatasync", "fsync", "allocate"].contains(fields[0]),
                let code = codes[fields[1]], let count = Int(fields[2])
            else { return nil }
            return Fault(call: fields[0], code: code, remaining: count, pathSuffix: fields.count > 3 ? fields[3] : nil)
        }
    }

    public func open(_ path: String, flags: Int32, mode: mode_t) throws(SystemCallError) -> Int32 {
        let fd = try real.open(path, flags: flags, mode: mode)
        state.withLock { $0.paths[fd] = path }
        return fd
    }

    public func close(_ fd: Int32) {
        state.withLock { _ = $0.paths.removeValue(forKey: fd) }
        real.close(fd)
    }

    public func pwrite(_ fd: Int32, _ bytes: UnsafeRawBufferPointer, at offset: Int) throws(SystemCallError) -> Int {
        try inject("write", fd)
        return try real.pwrite(fd, bytes, at: offset)
    }

    public func pwrite(
        _ fd: Int32, _ head: UnsafeRawBufferPointer, _ body: UnsafeRawBufferPointer, at offset: Int
    )
        throws(SystemCallError) -> Int
    {
        try inject("write", fd)
        return try real.pwrite(fd, head, body, at: offset)
    }

    public func pread(_ fd: Int32, into buffer: UnsafeMutableRawBufferPointer, at offset: Int) throws(SystemCallError) -> Int {
        try real.pread(fd, into: buffer, at: offset)
    }

    public func size(_ fd: Int32) throws(SystemCallError) -> Int { try real.size(fd) }

    public func fdatasync(_ fd: Int32) throws(SystemCallError) {
        try inject("fdatasync", fd)
        try real.fdatasync(fd)
    }

    public func fsync(_ fd: Int32) throws(SystemCallError) {
        try inject("fsync", fd)
        try real.fsync(fd)
    }

    public func fsyncDirectory(_ path: String) throws(SystemCallError) { try real.fsyncDirectory(path) }

    public func allocate(_ fd: Int32, bytes: Int) throws(SystemCallError) {
        try inject("allocate", fd)
        try real.allocate(fd, bytes: bytes)
    }

    public func truncate(_ fd: Int32, to bytes: Int) throws(SystemCallError) { try real.truncate(fd, to: bytes) }

    public func rename(_ from: String, to: String) throws(SystemCallError) {
        try real.rename(from, to: to)
        state.withLock { state in
            for (fd, path) in state.paths where path == from { state.paths[fd] = to }
        }
    }

    public func unlink(_ path: String) throws(SystemCallError) { try real.unlink(path) }
    public func mkdir(_ path: String, mode: mode_t) throws(SystemCallError) { try real.mkdir(path, mode: mode) }
    public func rmdir(_ path: String) throws(SystemCallError) { try real.rmdir(path) }
    public func list(_ path: String) throws(SystemCallError) -> [String] { try real.list(path) }
    public func exists(_ path: String) -> Bool { real.exists(path) }
    public func isDirectory(_ path: String) -> Bool { real.isDirectory(path) }
    public func isWritable(_ path: String) -> Bool { real.isWritable(path) }

    public func lockExclusively(_ path: String) throws(SystemCallError) -> Int32 {
        let fd = try real.lockExclusively(path)
        state.withLock { $0.paths[fd] = path }
        return fd
    }

    public func diskUsage(_ path: String) -> UInt64 { real.diskUsage(path) }
    public func capacity(_ path: String) -> (free: UInt64, total: UInt64)? { real.capacity(path) }
}
#endif
