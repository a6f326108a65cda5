#if DEBUG
import Foundation
import Synchronization
import Testing
#if canImport(Glibc)
import Glibc
#endif
@testable import Spool

/// The test build's fault hook, on real files: the drills steer a running receiver's storage with it.
@Suite struct StorageFaultFileSystemTests {
    let directory = NSTemporaryDirectory() + "walship-storage-faults-\(UUID().uuidString)"
    var control: String { directory + "/faults" }

    init() throws { try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true) }

    func code(_ call: () throws -> Void) -> Int32? {
        do {
            try call()
            return nil
        } catch { return (error as? SystemCallError)?.code ?? -1 }
    }

    @Test func aJournalsFdatasyncFailsAsManyTimesAsAskedAndOnlyForJournals() throws {
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let reports = Mutex<[String]>([])
        let fs = StorageFaultFileSystem(controlFile: control) { line in reports.withLock { $0.append(line) } }
        try "fdatasync EIO 1 .partial\n".write(toFile: control, atomically: true, encoding: .utf8)
        let other = try fs.open(directory + "/system.conf", flags: O_RDWR | O_CREAT, mode: 0o640)
        // A journal is prepared under another name and renamed into place while open.
        let journal = try fs.open(directory + "/000000010000000000000001.partial.tmp", flags: O_RDWR | O_CREAT, mode: 0o640)
        try fs.rename(directory + "/000000010000000000000001.partial.tmp", to: directory + "/000000010000000000000001.partial")
        #expect(code { try fs.fdatasync(other) } == nil)
        #expect(code { try fs.fdatasync(journal) } == EIO)
        #expect(code { try fs.fdatasync(journal) } == nil, "the fault is consumed")
        #expect(reports.withLock { $0 }.contains { $0.contains("injected fdatasync") })
        fs.close(journal)
        fs.close(other)
    }

    @Test func writesFailUntilTheControlFileIsRewritten() throws {
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let reports = Mutex<[String]>([])
        let fs = StorageFaultFileSystem(controlFile: control) { line in reports.withLock { $0.append(line) } }
        let fd = try fs.open(directory + "/data", flags: O_RDWR | O_CREAT, mode: 0o640)
        defer { fs.close(fd) }
        let bytes: [UInt8] = [1, 2, 3]
        func write() -> Int32? { code { _ = try bytes.withUnsafeBytes { try fs.pwrite(fd, $0, at: 0) } } }
        #expect(write() == nil, "no control file, no fault")
        try "write ENOSPC 1000\n".write(toFile: control, atomically: true, encoding: .utf8)
        #expect(code { try fs.allocate(fd, bytes: 4096) } == nil, "only the call named fails")
        #expect(write() == ENOSPC)
        #expect(write() == ENOSPC)
        // The first injection is reported even when another call read the file; the rest of a long fault is not.
        #expect(reports.withLock { $0 }.filter { $0.contains("injected write error \(ENOSPC)") }.count == 1)
        try "".write(toFile: control, atomically: true, encoding: .utf8)
        #expect(write() == nil)
    }

    @Test func unknownLinesAreIgnored() {
        let faults = StorageFaultFileSystem.parse(
            "fdatasync EIO 2\nread EIO 1\nwrite EBADF 1\nwrite ENOSPC many\nfsync EDQUOT 3 .conf\n")
        #expect(faults.map(\.call) == ["fdatasync", "fsync"])
        #expect(faults.last?.pathSuffix == ".conf")
        #expect(faults.first?.remaining == 2)
    }
}
#endif
