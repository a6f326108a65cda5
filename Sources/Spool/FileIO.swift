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

/// Thin POSIX layer. Every durability step names the crash it protects against.
enum FileIO {
    static func open(_ path: String, _ flags: Int32, mode: mode_t = 0o640) throws -> Int32 {
        let fd = Glibc.open(path, flags | O_CLOEXEC, mode)
        guard fd >= 0 else { throw SpoolError.errno("open", path) }
        return fd
    }

    static func close(_ fd: Int32) { _ = Glibc.close(fd) }

    static func pwriteAll(_ fd: Int32, _ bytes: UnsafeRawBufferPointer, at offset: Int, path: String) throws {
        var done = 0
        while done < bytes.count {
            let n = pwrite(fd, bytes.baseAddress! + done, bytes.count - done, off_t(offset + done))
            if n < 0 {
                if errno == EINTR { continue }
                throw SpoolError.errno("write", path)
            }
            // A zero-length write without an error means the filesystem is out of space.
            if n == 0 { throw SpoolError.errno("write", path, ENOSPC) }
            done += n
        }
    }

    /// `head` then `body` at `offset` in one system call (a journal record's header and its data); what a
    /// short write leaves goes the ordinary way.
    static func pwriteAll(_ fd: Int32, _ head: UnsafeRawBufferPointer, _ body: UnsafeRawBufferPointer, at offset: Int,
                          path: String) throws {
        var vectors = [iovec(iov_base: UnsafeMutableRawPointer(mutating: head.baseAddress), iov_len: head.count),
                       iovec(iov_base: UnsafeMutableRawPointer(mutating: body.baseAddress), iov_len: body.count)]
        var written: Int
        repeat {
            written = pwritev(fd, &vectors, 2, off_t(offset))
        } while written < 0 && errno == EINTR
        if written < 0 { throw SpoolError.errno("write", path) }
        // Either rest may be empty; pwriteAll then writes nothing (and reports a write of 0 as a full disk).
        let headDone = min(written, head.count), bodyDone = written - headDone
        try pwriteAll(fd, UnsafeRawBufferPointer(rebasing: head[headDone...]), at: offset + headDone, path: path)
        try pwriteAll(fd, UnsafeRawBufferPointer(rebasing: body[bodyDone...]), at: offset + head.count + bodyDone, path: path)
    }

    static func preadAll(_ fd: Int32, count: Int, at offset: Int, path: String) throws -> [UInt8] {
        var out = [UInt8](repeating: 0, count: count)
        var done = 0
        while done < count {
            let n = out.withUnsafeMutableBytes { pread(fd, $0.baseAddress! + done, count - done, off_t(offset + done)) }
            if n < 0 {
                if errno == EINTR { continue }
                throw SpoolError.errno("read", path)
            }
            if n == 0 { break }
            done += n
        }
        out.removeSubrange(done...)
        return out
    }

    static func fileSize(_ fd: Int32, path: String) throws -> Int {
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw SpoolError.errno("stat", path) }
        return Int(st.st_size)
    }

    /// Data (and the size, if it changed) reaches the disk; after a failure nothing since the last success is trusted.
    static func syncData(_ fd: Int32, path: String) throws {
        guard fdatasync(fd) == 0 else {
            // Any fsync failure is fatal, ENOSPC included: the kernel may already have dropped the dirty pages.
            throw SpoolError(.fsyncFailed, SpoolError.errno("fsync", path).message)
        }
    }

    static func syncFile(_ fd: Int32, path: String) throws {
        guard fsync(fd) == 0 else {
            // Any fsync failure is fatal, ENOSPC included: the kernel may already have dropped the dirty pages.
            throw SpoolError(.fsyncFailed, SpoolError.errno("fsync", path).message)
        }
    }

    /// Makes creations, renames and unlinks in `path` survive a crash.
    static func syncDirectory(_ path: String) throws {
        let fd = Glibc.open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else { throw SpoolError.errno("open directory", path) }
        defer { Glibc.close(fd) }
        guard fsync(fd) == 0 else { throw SpoolError(.fsyncFailed, SpoolError.errno("fsync directory", path).message) }
    }

    /// Reserves real blocks so later writes and fdatasync need no allocation (the pre-padding trick of pg_receivewal).
    /// On ext4 and XFS the blocks stay unwritten until first written (see `ZeroFill` in the journal).
    static func preallocate(_ fd: Int32, bytes: Int, path: String) throws {
        let rc = posix_fallocate(fd, 0, off_t(bytes))
        guard rc == 0 else { throw SpoolError.errno("preallocate", path, rc) }
    }

    /// Writes zeros over `range` of the file.
    static func writeZeros(_ fd: Int32, _ range: Range<Int>, path: String) throws {
        var offset = range.lowerBound
        while offset < range.upperBound {
            let n = min(range.upperBound - offset, zeros.count)
            try zeros.withUnsafeBytes { try pwriteAll(fd, UnsafeRawBufferPointer(rebasing: $0[0..<n]), at: offset, path: path) }
            offset += n
        }
    }

    private static let zeros = [UInt8](repeating: 0, count: 256 << 10)

    static func truncate(_ fd: Int32, to bytes: Int, path: String) throws {
        guard ftruncate(fd, off_t(bytes)) == 0 else { throw SpoolError.errno("truncate", path) }
    }

    /// temp file → fsync → rename → fsync directory: after a crash the file is either absent or whole.
    static func writeAtomically(_ bytes: UnsafeRawBufferPointer, to path: String, directory: String, mode: mode_t = 0o640) throws {
        let tmp = path + ".tmp"
        let fd = try open(tmp, O_WRONLY | O_CREAT | O_TRUNC, mode: mode)
        do {
            try pwriteAll(fd, bytes, at: 0, path: tmp)
            try syncFile(fd, path: tmp)
        } catch {
            close(fd)
            unlink(tmp)
            throw error
        }
        close(fd)
        guard rename(tmp, path) == 0 else { throw SpoolError.errno("rename to", path) }
        try syncDirectory(directory)
    }

    static func readWholeFile(_ path: String, maxBytes: Int) throws -> [UInt8] {
        let fd = try open(path, O_RDONLY)
        defer { close(fd) }
        let size = try fileSize(fd, path: path)
        guard size <= maxBytes else { throw SpoolError(.corrupt, "\"\(path)\" is \(size) bytes, more than the \(maxBytes) expected") }
        return try preadAll(fd, count: size, at: 0, path: path)
    }

    static func exists(_ path: String) -> Bool { access(path, F_OK) == 0 }

    static func isDirectory(_ path: String) -> Bool {
        var st = stat()
        return stat(path, &st) == 0 && (st.st_mode & S_IFMT) == S_IFDIR
    }

    static func makeDirectory(_ path: String, mode: mode_t = 0o750) throws {
        if isDirectory(path) { return }
        guard mkdir(path, mode) == 0 || errno == EEXIST else { throw SpoolError.errno("create directory", path) }
    }

    static func listDirectory(_ path: String) throws -> [String] {
        guard let dir = opendir(path) else { throw SpoolError.errno("list directory", path) }
        defer { closedir(dir) }
        var names: [String] = []
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(cString: raw.baseAddress!.assumingMemoryBound(to: CChar.self))
            }
            if name != "." && name != ".." { names.append(name) }
        }
        return names.sorted()
    }

    /// Removes a directory of plain files (a backup), its files first.
    static func removeDirectory(_ path: String) throws {
        for name in try listDirectory(path) { try remove(path + "/" + name) }
        guard rmdir(path) == 0 || errno == ENOENT else { throw SpoolError.errno("remove directory", path) }
    }

    static func remove(_ path: String) throws {
        guard unlink(path) == 0 || errno == ENOENT else { throw SpoolError.errno("remove", path) }
    }

    /// Free and total bytes of the filesystem holding `path`.
    public static func capacity(of path: String) -> (free: UInt64, total: UInt64)? {
        var st = statvfs()
        guard statvfs(path, &st) == 0 else { return nil }
        return (UInt64(st.f_bavail) * UInt64(st.f_frsize), UInt64(st.f_blocks) * UInt64(st.f_frsize))
    }
}
