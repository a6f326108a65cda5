import Foundation
import Testing

@testable import Spool

@Suite struct FileIOTests {
    /// A journal record's header and data go out in one call and land back to back at the offset.
    @Test func headAndBodyLandTogetherAtTheOffset() throws {
        let path = NSTemporaryDirectory() + "walship-fileio-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: path) }
        let fd = try FileIO.open(path, O_RDWR | O_CREAT | O_TRUNC)
        defer { FileIO.close(fd) }
        let head: [UInt8] = [1, 2, 3]
        let body = [UInt8](repeating: 7, count: 100_000)
        try head.withUnsafeBytes { h in try body.withUnsafeBytes { b in try FileIO.posix.pwriteAll(fd, h, b, at: 10, path: path) }
        }
        let empty: [UInt8] = []
        try empty.withUnsafeBytes { h in
            try head.withUnsafeBytes { b in try FileIO.posix.pwriteAll(fd, h, b, at: 100_013, path: path) }
        }
        let back = try FileIO.preadAll(fd, count: 200_000, at: 0, path: path)
        #expect(back.count == 100_016)
        #expect(back[0..<10].allSatisfy { $0 == 0 })
        #expect(Array(back[10..<13]) == head)
        #expect(back[13..<100_013].allSatisfy { $0 == 7 })
        #expect(Array(back[100_013...]) == head)
    }

    @Test func aFailedWriteNamesTheFile() throws {
        let path = NSTemporaryDirectory() + "walship-fileio-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: path) }
        let fd = try FileIO.open(path, O_RDONLY | O_CREAT)
        defer { FileIO.close(fd) }
        let bytes: [UInt8] = [1]
        let error = #expect(throws: SpoolError.self) {
            try bytes.withUnsafeBytes { h in
                try bytes.withUnsafeBytes { b in try FileIO.posix.pwriteAll(fd, h, b, at: 0, path: path) }
            }
        }
        #expect(error.map { "\($0)".contains(path) } == true)
    }
}
