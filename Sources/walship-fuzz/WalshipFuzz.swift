import FuzzHarness
import Foundation

// Two builds of one program. `make fuzz` compiles it with -sanitize=fuzzer and -D FUZZING: libFuzzer
// supplies main and drives `LLVMFuzzerTestOneInput` for the target named by WALSHIP_FUZZ_TARGET. The
// normal build replays files (`walship-fuzz TARGET FILE...`) and writes seeds (`walship-fuzz seeds DIR`).
#if FUZZING
let fuzzTarget = FuzzTarget(rawValue: ProcessInfo.processInfo.environment["WALSHIP_FUZZ_TARGET"] ?? "") ?? .frames

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOne(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    fuzzTarget.run(UnsafeRawBufferPointer(start: data, count: size))
    return 0
}
#else
@main
struct WalshipFuzz {
    static func main() throws {
        let arguments = CommandLine.arguments.dropFirst()
        if arguments.first == "seeds", let directory = arguments.dropFirst().first {
            for (target, seeds) in FuzzSeeds.all {
                let folder = directory + "/" + target.rawValue
                try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
                for (index, seed) in seeds.enumerated() {
                    try Data(seed).write(to: URL(fileURLWithPath: "\(folder)/seed-\(index)"))
                }
            }
        } else if let name = arguments.first, let target = FuzzTarget(rawValue: name) {
            for path in arguments.dropFirst() {
                let bytes = try [UInt8](Data(contentsOf: URL(fileURLWithPath: path)))
                bytes.withUnsafeBytes { target.run($0) }
                print("ok \(path)")
            }
        } else {
            FileHandle.standardError.write(Data("usage: walship-fuzz seeds DIR | walship-fuzz frames|frontend|walpage FILE...\n".utf8))
            exit(2)
        }
    }
}
#endif
