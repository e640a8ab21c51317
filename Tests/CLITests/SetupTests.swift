import Foundation
import XCTest

/// Set-up hygiene: what the README's commands make stays out of `git status`,
/// Python packages go into tools/.venv and never the system's Python, and the
/// tests' Python needs are all listed.
final class SetupTests: XCTestCase {
    let root = toolsDirectory.deletingLastPathComponent()
    func read(_ rel: String) throws -> String {
        try String(contentsOf: root.appendingPathComponent(rel), encoding: .utf8)
    }

    func testWhatTheReadmesCommandsMakeIsIgnored() throws {
        guard FileManager.default.fileExists(atPath: root.appendingPathComponent(".git").path) else {
            throw XCTSkip("not a git checkout")
        }
        for path in [
            "data/events.csv", "runs/fomaml/final.h5", "keys/host1.secret", "demo-run/data.h5",
            "studies/seeds/results.json", "tools/.venv/bin/python3", ".build/debug.yaml",
            "runs/fomaml/model.safetensors", "runs/fomaml/model.vocab.json"
        ] {
            let p = Process()
            p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
            p.arguments = ["git", "-C", root.path, "check-ignore", "-q", path]
            try p.run(); p.waitUntilExit()
            XCTAssertEqual(p.terminationStatus, 0, "\(path) would show in git status")
        }
        // ... and what the repository ships is not ignored.
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        p.arguments = ["git", "-C", root.path, "check-ignore", "-q", "studies/seeds.yaml"]
        try p.run(); p.waitUntilExit()
        XCTAssertEqual(p.terminationStatus, 1, "studies/seeds.yaml must stay tracked")
    }

    func testPythonPackagesGoIntoAVirtualEnvironmentAndAreAllListed() throws {
        let script = try read("tools/install-deps.sh")
        for line in script.split(separator: "\n") where line.contains("pip install") {
            XCTAssertTrue(
                line.contains("\"$venv/bin/python3\" -m pip install"), "a pip install outside tools/.venv: \(line)")
        }
        XCTAssertTrue(script.contains("-m venv"), script)
        let requirements = try read("tools/requirements.txt")
        for package in ["numpy", "h5py", "pyarrow", "matplotlib", "scipy", "tensorboard", "pyzmq"] {
            XCTAssertTrue(requirements.contains("\n\(package)>="), "tools/requirements.txt lacks \(package)")
        }
        // libzmq's pkg-config flags made SwiftPM warn on every build ("prohibited flag(s): -isystem").
        let manifest = try read("Package.swift")
        XCTAssertFalse(manifest.contains("pkgConfig: \"libzmq\""), "CZeroMQ must not take libzmq's pkg-config flags")
    }
}
