import Foundation
import Testing

@testable import FuzzHarness

/// Replays the fuzzers' seed and crash corpus (Fuzz/corpus, Fuzz/crashes) through the same targets on the
/// normal build: every input that ever crashed stays a regression test, without an instrumented build.
@Suite struct FuzzReplayTests {
    static let root: String = {
        var url = URL(fileURLWithPath: #filePath)
        url.deleteLastPathComponent()
        url.deleteLastPathComponent()
        url.deleteLastPathComponent()
        return url.path + "/Fuzz"
    }()

    static func files(_ target: FuzzTarget) -> [String] {
        ["corpus", "crashes"].flatMap { kind -> [String] in
            let directory = root + "/\(kind)/\(target.rawValue)"
            let names = (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []
            return names.sorted().map { directory + "/" + $0 }
        }
    }

    @Test(arguments: FuzzTarget.allCases)
    func corpusReplaysWithoutTrapping(_ target: FuzzTarget) throws {
        let files = Self.files(target)
        #expect(!files.isEmpty, "no corpus for \(target.rawValue) under \(Self.root) (make fuzz-seeds writes it)")
        for path in files {
            let bytes = try [UInt8](Data(contentsOf: URL(fileURLWithPath: path)))
            bytes.withUnsafeBytes { target.run($0) }
        }
    }

    @Test func seedsAreWellFormed() {
        // The frame seeds decode to messages, so the fuzzer starts from real shapes.
        for (target, seeds) in FuzzSeeds.all {
            #expect(!seeds.isEmpty, "\(target)")
            for seed in seeds { seed.withUnsafeBytes { target.run($0) } }
        }
    }
}
