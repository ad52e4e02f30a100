"""BLEU the papers' way: Moses-tokenized, lowercased (metrics.score with tokenize="moses")."""

import pytest

from nmtkit.cli import main
from nmtkit.metrics import score

pytest.importorskip("sacremoses")

# a French test set as Moses-tokenized corpora ship it (Multi30k's tokenized references), and
# the same sentences as a system writes them: detokenized, capitalised as it likes
REFERENCES = ["une femme marche dans l&apos; herbe .",
              "il dit &quot; bonjour &quot; à l&apos; enfant qui joue .",
              "deux hommes sont assis sur un banc ."]
HYPOTHESES = ["Une femme marche dans l'herbe.",
              'Il dit "bonjour" à l\'enfant qui joue.',
              "Deux hommes sont assis sur un banc."]


def test_moses_tokenization_scores_tokenized_references_as_the_papers_do() -> None:
    moses = score(HYPOTHESES, REFERENCES, "moses", "fr")
    assert moses.bleu_lowercase == pytest.approx(100.0)  # the same sentences
    assert moses.bleu < 100.0  # cased: "Une" is not "une"
    assert "tok:moses-fr" in moses.bleu_lowercase_signature and "case:lc" in moses.bleu_lowercase_signature
    plain = score(HYPOTHESES, REFERENCES)  # 13a does not undo the escapes or "l' herbe"
    assert plain.bleu_lowercase < 70.0
    itself = score(REFERENCES, REFERENCES, "moses", "fr")  # tokenized text scores as it is
    assert itself.bleu == pytest.approx(100.0)


def test_evaluate_tokenize_moses_takes_the_language_from_the_reference(ckpt_and_files, capsys) -> None:
    ckpt, src, ref = ckpt_and_files
    assert main(["evaluate", "--checkpoint", str(ckpt), "--src", str(src), "--ref", str(ref),
                 "--tokenize", "moses"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "tok:moses-fr" in out[0] and "case:lc" in out[1] and "tok:moses-fr" in out[1]


@pytest.fixture
def ckpt_and_files(tiny_config, tmp_path):
    from nmtkit.training import train

    training = tiny_config.training.model_copy(update={"max_steps": 1, "valid_bleu": False})
    run = train(tiny_config.model_copy(update={"training": training}))
    src = tmp_path / "test.ko"
    src.write_text("삼십\n사\n")
    ref = tmp_path / "test.fr"
    ref.write_text("l&apos; herbe .\nquatre\n")
    return run / "best", src, ref
