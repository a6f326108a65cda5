import Foundation
import FuzzHarness

// Two builds of one program. `make fuzz` compiles it with -sanitize=fuzzer,address and -D FUZZING: the
// entry point SwiftPM expects of an executable hands over to libFuzzer's driver, which runs the target
// named by WALSHIP_FUZZ_TARGET. The
// normal build replays files (`walship-fuzz TARGET FILE...`) and writes seeds (`walship-fuzz seeds DIR`).
#if FUZZING
let fuzzTarget = FuzzTarget(rawValue: ProcessInfo.processInfo.environment["WALSHIP_FUZZ_TARGET"] ?? "") ?? .frames

@_silgen_name("LLVMFuzzerRunDriver")
func LLVMFuzzerRunDriver(
    _ argc: UnsafeMutablePointer<Int32>, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>,
    _ callback: @convention(c) (UnsafePointer<UInt8>?, Int) -> Int32
) -> Int32

@_cdecl("walship_fuzz_main")
public func walshipFuzzMain(_ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> Int32 {
    var count = argc
    var values = argv
    return LLVMFuzzerRunDriver(&count, &values) { data, size in
        fuzzTarget.run(UnsafeRawBufferPointer(start: data, count: size))
        return 0
    }
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
            FileHandle.standardError.write(
                Data("usage: walship-fuzz seeds DIR | walship-fuzz frames|frontend|walpage FILE...\n".utf8))
            exit(2)
        }
    }
}
#endif
