"""review/: journalled moves that undo exactly and survive a kill, path and token checks on every
request, doctor's findings gone after the review, and the page driven in headless Chromium."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("starlette")
from serve_helpers import child_env, free_port, headless_chromium, start_command  # noqa: E402
from starlette.testclient import TestClient  # noqa: E402

from convnets.cli import main  # noqa: E402
from convnets.doctor import diagnose  # noqa: E402
from convnets.doctor.synthetic import make_planted  # noqa: E402
from convnets.review import JOURNAL_FILE, QUARANTINE_DIR, DataFolder, Journal, ReviewError, undo_all  # noqa: E402
from convnets.review.app import TOKEN_HEADER, create_app  # noqa: E402
from convnets.review.findings import doctor_findings, load_findings, run_top_losses  # noqa: E402


def snapshot(root: Path) -> tuple[dict[str, str], list[str]]:
    """Every file (bytes hash) and folder under ``root``, the journal left out."""
    files, dirs = {}, []
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            dirs.append(os.path.relpath(os.path.join(dirpath, d), root))
        for f in filenames:
            path = os.path.join(dirpath, f)
            rel = os.path.relpath(path, root)
            if rel != JOURNAL_FILE:
                files[rel] = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    return files, sorted(dirs)


@pytest.fixture
def planted(tmp_path):
    """train/ + test/ of 2 classes (10 + 2 each) with an exact copy in test (leakage), a copy under
    the other class (conflict) and one image filed under the wrong class (a flip)."""
    return make_planted(
        tmp_path / "data", classes=2, per_class=10, test_per_class=2, size=40, copies_per_kind=1,
        conflicts=1, flips=1, seed=1,
    )  # fmt: skip


def rel(planted, path) -> str:
    return Path(path).relative_to(planted.root).as_posix()


# --- the journal --------------------------------------------------------------------------------


def test_relabel_set_aside_keep_one_then_undo_restores_the_folder_exactly(planted):
    root = planted.root
    before = snapshot(root)
    journal = Journal(DataFolder(root))
    flipped = rel(planted, planted.flips[0])
    (move,) = journal.relabel(flipped, "newclass")  # a class folder that does not exist yet
    assert move.dst == f"train/newclass/{Path(flipped).name}"
    assert (root / move.dst).is_file() and not (root / flipped).exists()

    kind, original, copy = planted.copies[0]
    (aside,) = journal.set_aside([rel(planted, copy)])
    assert aside.dst == f"{QUARANTINE_DIR}/{rel(planted, copy)}" and (root / aside.dst).is_file()

    a, b = planted.conflicts[0]
    kept = journal.keep_one([rel(planted, a), rel(planted, b)], rel(planted, a))
    assert [m.src for m in kept] == [rel(planted, b)] and (root / a).is_file() and not (root / b).exists()
    assert journal.where()[rel(planted, b)] == f"{QUARANTINE_DIR}/{rel(planted, b)}"
    assert journal.decisions()[flipped] == "relabel"

    # Undo the last action only, then everything: the same files with the same bytes, the same
    # folders (the new class folder and the quarantine are gone again).
    assert [m.dst for m in journal.undo_last()] == [rel(planted, b)]
    assert (root / b).is_file()
    assert len(undo_all(str(root))) == 2
    assert snapshot(root) == before
    assert not (root / QUARANTINE_DIR).exists() and not (root / "train" / "newclass").exists()
    assert Journal(DataFolder(root)).live_steps() == []


def test_a_move_never_overwrites(planted):
    root = planted.root
    journal = Journal(DataFolder(root))
    flipped = rel(planted, planted.flips[0])
    name = Path(flipped).name
    taken = root / "train" / "class0" / name  # a different picture already has the name there
    shutil.copyfile(planted.copies[0][1], taken)
    (move,) = journal.relabel(flipped, "class0")
    assert move.dst == f"train/class0/{Path(name).stem} (2){Path(name).suffix}"
    assert taken.read_bytes() == Path(planted.copies[0][1]).read_bytes() and (root / move.dst).is_file()


CRASH_SCRIPT = """
import os, signal, sys
import convnets.review.journal as j
real = j._move
def crash(src, dst):
    if sys.argv[2] == "after":
        real(src, dst)  # moved, but not yet marked done in the journal
    os.kill(os.getpid(), signal.SIGKILL)
j._move = crash
j.Journal(j.DataFolder(sys.argv[1])).relabel(sys.argv[3], "class0")
"""


@pytest.mark.parametrize("when", ["before", "after"])
def test_a_kill_between_journal_and_move_loses_nothing(planted, when):
    """The process is killed (SIGKILL) right after the journal line is fsynced, before (or right
    after) the rename: reopening finishes the step, and --undo then restores the folder exactly."""
    root = planted.root
    before = snapshot(root)
    flipped = rel(planted, planted.flips[0])
    assert flipped.startswith("train/class1/")
    proc = subprocess.run(
        [sys.executable, "-c", CRASH_SCRIPT, str(root), when, flipped], env=child_env(), capture_output=True
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    lines = [json.loads(x) for x in (root / JOURNAL_FILE).read_text().splitlines()]
    assert [r["op"] for r in lines] == ["move"]  # written, never marked done
    dst = lines[0]["dst"]
    assert (root / flipped).exists() == (when == "before")
    assert (root / dst).exists() == (when == "after")

    journal = Journal(DataFolder(root))  # recovery: the move is finished
    assert journal.recovered == [1]
    assert (root / dst).is_file() and not (root / flipped).exists()
    assert journal.where() == {flipped: dst}

    assert main(["review", str(root), "--undo"]) == 0
    assert snapshot(root) == before


# --- requests from the page -----------------------------------------------------------------------


@pytest.fixture
def client(planted, tmp_path):
    report = diagnose(planted.root, labels=False, progress=False).to_dict()
    app = create_app(planted.root, doctor_findings(report, DataFolder(planted.root)))
    with TestClient(app, base_url="http://127.0.0.1:8010") as c:
        c.headers[TOKEN_HEADER] = app.state.token
        yield c, app


def test_page_carries_the_token_and_changes_need_it(client, planted):
    c, app = client
    page = c.get("/")
    assert page.status_code == 200 and app.state.token in page.text
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    flipped = rel(planted, planted.flips[0])
    body = {"action": "relabel", "path": flipped, "to": "class0"}
    for headers in ({TOKEN_HEADER: ""}, {TOKEN_HEADER: "guess"}):
        r = c.post("/api/action", json=body, headers=headers)
        assert r.status_code == 403 and "X-Review-Token" in r.json()["error"]
        assert c.post("/api/undo", headers=headers).status_code == 403
    assert (planted.root / flipped).is_file()
    # Another site reaching the port through DNS rebinding names its own host: refused.
    assert c.get("/api/state", headers={"host": "evil.example:8010"}).status_code == 403
    r = c.post("/api/action", json=body)
    assert r.status_code == 200 and r.json()["moves"] == [
        {"src": flipped, "dst": f"train/class0/{Path(flipped).name}"}
    ]


def test_body_limit_content_type_and_api_key(planted):
    app = create_app(planted.root, doctor_findings({}, DataFolder(planted.root)), api_key="s3cret")
    with TestClient(app, base_url="http://localhost:8010") as c:
        c.headers[TOKEN_HEADER] = app.state.token
        assert c.get("/api/state").status_code == 401
        c.headers["Authorization"] = "Bearer s3cret"
        assert c.get("/api/state").json()["classes"] == ["class0", "class1"]
        huge = b'{"action": "keep", "path": "' + b"a" * 300_000 + b'"}'
        r = c.post("/api/action", content=huge, headers={"content-type": "application/json"})
        assert r.status_code == 413
        assert (
            c.post("/api/action", content=b"keep", headers={"content-type": "text/plain"}).status_code == 415
        )
        r = c.post("/api/action", content=b"{nope", headers={"content-type": "application/json"})
        assert r.status_code == 400
        assert c.post("/api/action", json=["keep"]).status_code == 400
        assert c.post("/api/action", json={"action": "delete", "path": "x"}).status_code == 400


def test_no_request_reaches_outside_data(client, planted, tmp_path):
    c, _ = client
    root = planted.root
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = outside / "secret.png"
    secret.write_bytes((root / rel(planted, planted.flips[0])).read_bytes())
    (root / "train" / "class0" / "link.png").symlink_to(secret)  # a link inside DATA to a file outside
    (root / "train" / "linkdir").symlink_to(outside, target_is_directory=True)  # a class folder outside
    before = snapshot(root)
    bad_paths = [
        "../outside/secret.png", "train/../../outside/secret.png", str(secret), "/etc/passwd",
        str(root / rel(planted, planted.flips[0])), "train/class0/link.png", "train/linkdir/secret.png",
        "", ".", "train/class0/", "train//class0/x.png", JOURNAL_FILE,
        f"{QUARANTINE_DIR}/../../outside/secret.png", "train/class0/a\0b.png", "train\\class0\\x.png",
        "train/class0", "train/.hidden/x.png", 7, None,
    ]  # fmt: skip
    for p in bad_paths:
        for body in ({"action": "quarantine", "path": p}, {"action": "relabel", "path": p, "to": "class1"},
                     {"action": "keep", "path": p}):  # fmt: skip
            r = c.post("/api/action", json=body)
            assert 400 <= r.status_code < 500, (p, body, r.status_code)
        if isinstance(p, str) and "\0" not in p:
            assert 400 <= c.get("/api/thumb", params={"path": p}).status_code < 500, p
    good = rel(planted, planted.flips[0])
    bad_classes = ["", ".", "..", "a/b", "a\0b", ".hidden", "../evil", "x\\y", " pad", "linkdir", 3, None]
    for name in bad_classes:
        r = c.post("/api/action", json={"action": "relabel", "path": good, "to": name})
        assert r.status_code == 400, (name, r.status_code, r.text)
    r = c.post("/api/action", json={"action": "keep-one", "path": good, "group": [good, {"x": 1}]})
    assert r.status_code == 400
    r = c.post(
        "/api/action", json={"action": "keep-one", "path": good, "group": [good, "../outside/secret.png"]}
    )
    assert r.status_code == 400
    assert snapshot(root) == before  # nothing moved, nothing created
    assert sorted(os.listdir(outside)) == ["secret.png"]
    assert Journal(DataFolder(root)).records == []


def test_thumbnails_of_data_and_quarantine(client, planted):
    from io import BytesIO

    from PIL import Image

    c, _ = client
    copy = rel(planted, planted.copies[0][2])
    r = c.get("/api/thumb", params={"path": copy})
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    assert max(Image.open(BytesIO(r.content)).size) <= 192
    moved = c.post("/api/action", json={"action": "quarantine", "path": copy}).json()["moves"][0]["dst"]
    assert c.get("/api/thumb", params={"path": copy}).status_code == 404
    assert c.get("/api/thumb", params={"path": moved}).status_code == 200
    (planted.root / "train" / "class0" / "broken.png").write_bytes(b"\x89PNG not really")
    r = c.get("/api/thumb", params={"path": "train/class0/broken.png"})
    assert r.status_code == 400 and "cannot be read" in r.json()["error"]


def test_after_the_review_doctor_finds_the_fixed_problems_gone(tmp_path, capsys):
    pytest.importorskip("cleanlab", reason="the label check needs the doctor extra (cleanlab)")
    planted = make_planted(
        tmp_path / "data", classes=3, per_class=20, test_per_class=2, size=40, copies_per_kind=1,
        conflicts=1, flips=2, seed=0,
    )  # fmt: skip
    root = planted.root
    assert main(["doctor", str(root), "--json"]) == 0
    (tmp_path / "doctor.json").write_text(capsys.readouterr().out)
    findings = load_findings(DataFolder(root), doctor_json=tmp_path / "doctor.json")
    kinds = {i.kind for i in findings.items}
    assert {"leakage", "conflict", "label"} <= kinds, kinds
    flagged = {i.files[0].path: i.suggested for i in findings.items if i.kind == "label"}
    assert sorted(flagged) == sorted(rel(planted, f) for f in planted.flips), flagged

    app = create_app(root, findings)
    with TestClient(app, base_url="http://127.0.0.1") as c:
        c.headers[TOKEN_HEADER] = app.state.token
        for path, suggested in flagged.items():
            r = c.post("/api/action", json={"action": "relabel", "path": path, "to": suggested})
            assert r.status_code == 200, r.text
            # the file name says the class it was drawn from (make_planted): back where it belongs
            assert r.json()["moves"][0]["dst"].split("/")[1] == Path(path).name.split("_")[0]
        for item in findings.items:
            if item.kind in ("leakage", "conflict", "duplicate"):
                group = [f.path for f in item.files]
                keep = next(f.path for f in item.files if f.split == "train")
                r = c.post("/api/action", json={"action": "keep-one", "path": keep, "group": group})
                assert r.status_code == 200, r.text

    after = diagnose(root, progress=False)
    assert after.duplicates == [] and after.leakage == [] and after.conflicts == []
    assert after.label_check.ran and after.label_issues == []


def test_a_runs_top_losses_are_items(planted, tmp_path):
    import torch

    from convnets import create_model
    from convnets.base.runs import DataSource, RunConfig
    from convnets.weights import save_state_dict

    torch.manual_seed(0)
    run = tmp_path / "run"
    run.mkdir()
    save_state_dict(create_model("lenet5", num_classes=2, in_chans=3), run / "model.safetensors")
    RunConfig(
        model="lenet5", num_classes=2, class_names=["class0", "class1"], image_size=(32, 32), in_chans=3,
        mean=(0.5,) * 3, std=(0.25,) * 3, data=DataSource("elsewhere"),
    ).write(run)  # fmt: skip
    folder = DataFolder(planted.train)  # the train folder alone: plain class folders
    found = run_top_losses(run, folder, k=5)
    assert len(found.items) == 5 and found.outside == 0
    assert all(i.kind == "loss" and (planted.train / i.files[0].path).is_file() for i in found.items)
    losses = [float(i.files[0].note.split()[-1]) for i in found.items]
    assert losses == sorted(losses, reverse=True)
    presplit = run_top_losses(run, DataFolder(planted.root), k=40)  # train/ and test/ together
    assert {i.files[0].path.split("/")[0] for i in presplit.items} == {"train", "test"}


def test_findings_from_doctor_run_now_match_its_json(planted, capsys):
    found = load_findings(DataFolder(planted.root), labels=False, progress=False)
    assert main(["doctor", str(planted.root), "--json", "--no-labels"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [i.to_dict() for i in found.items] == [
        i.to_dict() for i in doctor_findings(report, DataFolder(planted.root)).items
    ]
    leak = next(i for i in found.items if i.kind == "leakage")
    assert {f.split for f in leak.files} == {"train", "test"} and found.outside == 0


def test_one_review_per_folder_at_a_time(planted):
    app = create_app(planted.root, doctor_findings({}, DataFolder(planted.root)))
    with pytest.raises(ReviewError, match="another convnets review"):
        create_app(planted.root, doctor_findings({}, DataFolder(planted.root)))
    assert main(["review", str(planted.root), "--undo"]) == 2  # refused while the page is open
    app.state.journal._held.close()
    assert main(["review", str(planted.root), "--undo"]) == 0


def test_bad_class_names_are_refused():
    for name in ("", ".", "..", "a/b", "a\0b", ".q", "\n"):
        with pytest.raises(ReviewError):
            from convnets.review import check_class_name

            check_class_name(name)


# --- the page in a browser ------------------------------------------------------------------------


def _start_review(data: Path, port: int, *extra: str, log: Path) -> subprocess.Popen:
    args = ["review", str(data), "--port", str(port), *extra]
    return start_command(args, f"http://127.0.0.1:{port}/api/state", log)


def test_relabel_quarantine_and_undo_in_headless_chromium(planted, tmp_path, capsys):
    _, browser = headless_chromium()
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import Select, WebDriverWait

    root = planted.root
    before = snapshot(root)
    assert main(["doctor", str(root), "--json", "--no-labels"]) == 0
    report = json.loads(capsys.readouterr().out)
    flipped = rel(planted, planted.flips[0])  # the mislabelled image, as doctor's label check names it
    report["label_issues"] = [
        {"rank": 1, "path": str(root / flipped), "split": "train", "label": "class1", "suggested": "class0",
         "label_prob": 0.1, "suggested_prob": 0.9, "quality": 0.1}
    ]  # fmt: skip
    (tmp_path / "doctor.json").write_text(json.dumps(report))
    port = free_port()
    log = tmp_path / "review.log"
    server = _start_review(root, port, "--doctor-json", str(tmp_path / "doctor.json"), log=log)
    try:
        browser.set_page_load_timeout(30)
        browser.get(f"http://127.0.0.1:{port}/")
        wait = WebDriverWait(browser, 30)
        wait.until(lambda b: b.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "yes")

        def click(element) -> None:  # scrolled into view first (the default window is small)
            browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", element)
            element.click()

        def card(path: str):
            return browser.find_element(
                By.CSS_SELECTOR, f'.item[data-kind="label"] .file[data-path="{path}"]'
            )

        wait.until(
            lambda b: card(flipped).find_element(By.TAG_NAME, "img").get_attribute("data-loaded") == "yes"
        )
        # 1. relabel: the select offers the suggested class first
        assert (
            Select(card(flipped).find_element(By.CSS_SELECTOR, "select.move-to")).first_selected_option.text
            == "class0"
        )
        click(card(flipped).find_element(By.CSS_SELECTOR, "button.act-move"))
        wait.until(ec.text_to_be_present_in_element((By.ID, "status"), "moved"))
        relabelled = root / "train" / "class0" / Path(flipped).name
        assert relabelled.is_file() and not (root / flipped).exists()
        assert card(flipped).get_attribute("data-now") == f"train/class0/{Path(flipped).name}"

        # 2. set aside a copy that leaked into test/
        copy = rel(planted, planted.copies[0][2])
        leak = browser.find_element(By.CSS_SELECTOR, f'.item[data-kind="leakage"] .file[data-path="{copy}"]')
        click(leak.find_element(By.CSS_SELECTOR, "button.act-quarantine"))
        wait.until(ec.text_to_be_present_in_element((By.ID, "status"), "set aside"))
        assert (root / QUARANTINE_DIR / copy).is_file() and not (root / copy).exists()

        # 3. undo (the set-aside), then undo (the relabel): the folder as it was
        click(browser.find_element(By.ID, "undo"))
        wait.until(ec.text_to_be_present_in_element((By.ID, "status"), "undone"))
        assert (root / copy).is_file() and not (root / QUARANTINE_DIR).exists()
        assert relabelled.is_file()
        click(browser.find_element(By.ID, "undo"))
        wait.until(lambda b: (root / flipped).is_file())
        wait.until(lambda b: not b.find_element(By.ID, "undo").is_enabled())
        assert snapshot(root) == before
    finally:
        browser.quit()
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)


def test_undo_of_a_file_moved_by_hand_is_refused_and_journals_nothing(planted):
    root = planted.root
    journal = Journal(DataFolder(root))
    flipped = rel(planted, planted.flips[0])
    (move,) = journal.relabel(flipped, "class0")
    os.rename(root / move.dst, root / "elsewhere.png")  # the user moves it outside the review
    n = len(journal.records)
    with pytest.raises(ReviewError, match="changed outside the review"):
        journal.undo_last()
    assert len(journal.records) == n and len(Journal(DataFolder(root)).records) == n
