#if canImport(Glibc)
import Glibc
#endif

/// A system call that failed, with its errno. `FileIO` turns it into a `SpoolError` naming the path.
public struct SystemCallError: Error, Equatable, Sendable {
    public let code: Int32
    public init(_ code: Int32) { self.code = code }
}

/// The calls the spool, its journals, the local buffer and the backup writer make to the file system: one
/// small interface, so that a test can fail any of them or lose what was never fsynced. `PosixFileSystem` is
/// the real one; `InMemoryFileSystem` the one tests and the fault simulation use.
public protocol FileSystem: Sendable {
    func open(_ path: String, flags: Int32, mode: mode_t) throws(SystemCallError) -> Int32
    func close(_ fd: Int32)
    /// Writes at most `bytes.count` bytes at `offset`; returns how many were written (may be fewer).
    func pwrite(_ fd: Int32, _ bytes: UnsafeRawBufferPointer, at offset: Int) throws(SystemCallError) -> Int
    /// `head` then `body` at `offset`, as far as one call goes; returns how many bytes were written.
    func pwrite(
        _ fd: Int32, _ head: UnsafeRawBufferPointer, _ body: UnsafeRawBufferPointer, at offset: Int
    )
        throws(SystemCallError) -> Int
    /// Reads at most `buffer.count` bytes at `offset`; 0 at the end of the file.
    func pread(_ fd: Int32, into buffer: UnsafeMutableRawBufferPointer, at offset: Int) throws(SystemCallError) -> Int
    func size(_ fd: Int32) throws(SystemCallError) -> Int
    func fdatasync(_ fd: Int32) throws(SystemCallError)
    func fsync(_ fd: Int32) throws(SystemCallError)
    func fsyncDirectory(_ path: String) throws(SystemCallError)
    func allocate(_ fd: Int32, bytes: Int) throws(SystemCallError)
    func truncate(_ fd: Int32, to bytes: Int) throws(SystemCallError)
    func rename(_ from: String, to: String) throws(SystemCallError)
    func unlink(_ path: String) throws(SystemCallError)
    func mkdir(_ path: String, mode: mode_t) throws(SystemCallError)
    func rmdir(_ path: String) throws(SystemCallError)
    func list(_ path: String) throws(SystemCallError) -> [String]
    func exists(_ path: String) -> Bool
    func isDirectory(_ path: String) -> Bool
    func isWritable(_ path: String) -> Bool
    /// An exclusive lock on `path` (created if missing) held until `close` of the returned descriptor.
    func lockExclusively(_ path: String) throws(SystemCallError) -> Int32
    /// Bytes the regular files below `path` take on disk.
    func diskUsage(_ path: String) -> UInt64
    /// Free and total bytes of the filesystem holding `path`.
    func capacity(_ path: String) -> (free: UInt64, total: UInt64)?
}

/// The real file system.
public struct PosixFileSystem: FileSystem {
    public init() {}

    private static func check(_ rc: Int32) throws(SystemCallError) {
        if rc != 0 { throw SystemCallError(errno) }
    }

    public func open(_ path: String, flags: Int32, mode: mode_t) throws(SystemCallError) -> Int32 {
        let fd = Glibc.open(path, flags | O_CLOEXEC, mode)
        guard fd >= 0 else { throw SystemCallError(errno) }
        return fd
    }

    public func close(_ fd: Int32) { _ = Glibc.close(fd) }

    public func pwrite(_ fd: Int32, _ bytes: UnsafeRawBufferPointer, at offset: Int) throws(SystemCallError) -> Int {
        while true {
            let n = Glibc.pwrite(fd, bytes.baseAddress, bytes.count, off_t(offset))
            if n >= 0 { return n }
            if errno != EINTR { throw SystemCallError(errno) }
        }
    }

    public func pwrite(
        _ fd: Int32, _ head: UnsafeRawBufferPointer, _ body: UnsafeRawBufferPointer, at offset: Int
    )
        throws(SystemCallError) -> Int
    {
        var vectors = [
            iovec(iov_base: UnsafeMutableRawPointer(mutating: head.baseAddress), iov_len: head.count),
            iovec(iov_base: UnsafeMutableRawPointer(mutating: body.baseAddress), iov_len: body.count),
        ]
        while true {
            let n = pwritev(fd, &vectors, 2, off_t(offset))
            if n >= 0 { return n }
            if errno != EINTR { throw SystemCallError(errno) }
        }
    }

    public func pread(_ fd: Int32, into buffer: UnsafeMutableRawBufferPointer, at offset: Int) throws(SystemCallError) -> Int {
        while true {
            let n = Glibc.pread(fd, buffer.baseAddress, buffer.count, off_t(offset))
            if n >= 0 { return n }
            if errno != EINTR { throw SystemCallError(errno) }
        }
    }

    public func size(_ fd: Int32) throws(SystemCallError) -> Int {
        var st = stat()
        try Self.check(fstat(fd, &st))
        return Int(st.st_size)
    }

    public func fdatasync(_ fd: Int32) throws(SystemCallError) { try Self.check(Glibc.fdatasync(fd)) }
    public func fsync(_ fd: Int32) throws(SystemCallError) { try Self.check(Glibc.fsync(fd)) }

    public func fsyncDirectory(_ path: String) throws(SystemCallError) {
        let fd = Glibc.open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else { throw SystemCallError(errno) }
        defer { Glibc.close(fd) }
        try Self.check(Glibc.fsync(fd))
    }

    public func allocate(_ fd: Int32, bytes: Int) throws(SystemCallError) {
        let rc = posix_fallocate(fd, 0, off_t(bytes))
        if rc != 0 { throw SystemCallError(rc) }
    }

    public func truncate(_ fd: Int32, to bytes: Int) throws(SystemCallError) { try Self.check(ftruncate(fd, off_t(bytes))) }
    public func rename(_ from: String, to: String) throws(SystemCallError) { try Self.check(Glibc.rename(from, to)) }
    public func unlink(_ path: String) throws(SystemCallError) { try Self.check(Glibc.unlink(path)) }
    public func mkdir(_ path: String, mode: mode_t) throws(SystemCallError) { try Self.check(Glibc.mkdir(path, mode)) }
    public func rmdir(_ path: String) throws(SystemCallError) { try Self.check(Glibc.rmdir(path)) }

    public func list(_ path: String) throws(SystemCallError) -> [String] {
        guard let dir = opendir(path) else { throw SystemCallError(errno) }
        defer { closedir(dir) }
        var names: [String] = []
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(cString: raw.baseAddress!.assumingMemoryBound(to: CChar.self))
            }
            if name != "." && name != ".." { names.append(name) }
        }
        return names
    }

    public func exists(_ path: String) -> Bool { access(path, F_OK) == 0 }

    public func isDirectory(_ path: String) -> Bool {
        var st = stat()
        return stat(path, &st) == 0 && (st.st_mode & S_IFMT) == S_IFDIR
    }

    public func isWritable(_ path: String) -> Bool { access(path, W_OK) == 0 }

    public func lockExclusively(_ path: String) throws(SystemCallError) -> Int32 {
        let fd = try open(path, flags: O_RDWR | O_CREAT, mode: 0o640)
        guard flock(fd, LOCK_EX | LOCK_NB) == 0 else {
            let code = errno
            Glibc.close(fd)
            throw SystemCallError(code)
        }
        return fd
    }

    public func diskUsage(_ path: String) -> UInt64 {
        var total: UInt64 = 0
        guard let names = try? list(path) else { return 0 }
        for name in names {
            var st = stat()
            let child = path + "/" + name
            guard lstat(child, &st) == 0 else { continue }
            if (st.st_mode & S_IFMT) == S_IFREG { total += UInt64(st.st_blocks) * 512 }
            if (st.st_mode & S_IFMT) == S_IFDIR { total += diskUsage(child) }
        }
        return total
    }

    public func capacity(_ path: String) -> (free: UInt64, total: UInt64)? {
        var st = statvfs()
        guard statvfs(path, &st) == 0 else { return nil }
        return (UInt64(st.f_bavail) * UInt64(st.f_frsize), UInt64(st.f_blocks) * UInt64(st.f_frsize))
    }
}
