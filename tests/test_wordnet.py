"""The WordNet noun reader: a hand-written tiny database, then known facts of the installed WordNet 3.0."""

from pathlib import Path

import pytest
import torch

from semid.data.registry import available_datasets
from semid.data.wordnet import find_wordnet_dir, load_wordnet
from semid.errors import SemidError

# Four synsets in the wndb format: entity <- animal <- dog, and an instance (Lassie) of dog.
DATA = """\
  1 This software and database is being provided to you, the LICENSEE, by
00000001 03 n 01 entity 0 001 ~ 00000002 n 0000 | that which exists
00000002 03 n 02 animal 0 beast 0 003 @ 00000001 n 0000 ~ 00000003 n 0000 + 00000009 v 0101 | a living organism
00000003 05 n 02 dog 0 Canis_familiaris 0 002 @ 00000002 n 0000 ~i 00000004 n 0000 | a domesticated canid
00000004 18 n 01 Lassie 0 001 @i 00000003 n 0000 | a fictional dog
"""
INDEX = """\
  1 This software and database is being provided to you, the LICENSEE, by
animal n 1 2 @ ~ 1 0 00000002
beast n 1 1 @ 1 0 00000002
canis_familiaris n 1 1 @ 1 0 00000003
dog n 2 2 @ ~ 2 1 00000099 00000003
entity n 1 1 ~ 1 0 00000001
lassie n 1 1 @i 1 0 00000004
"""


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    (tmp_path / "data.noun").write_text(DATA)
    (tmp_path / "index.noun").write_text(INDEX)
    return tmp_path


def test_reads_a_wordnet_folder(tiny):
    wn = load_wordnet(tiny)
    assert wn.names == [
        "entity.n.01",
        "animal.n.01",
        "dog.n.02",
        "lassie.n.01",
    ]  # dog is its lemma's 2nd sense
    assert wn.lemmas[2] == ["dog", "Canis_familiaris"]
    assert wn.glosses[1] == "a living organism"
    assert wn.parents("dog.n.02") == ["animal.n.01"] and wn.parents("lassie.n.01") == ["dog.n.02"]
    assert wn.instance.tolist() == [False, False, True]  # edges in file order: animal, dog, Lassie
    assert wn.roots() == ["entity.n.01"]
    assert wn.ancestors("lassie.n.01") == ["animal.n.01", "dog.n.02", "entity.n.01"]
    assert len(wn.closure()) == 1 + 2 + 3
    assert wn.depths().tolist() == [0, 1, 2, 3]
    assert wn.texts()[2] == "dog, Canis familiaris: a domesticated canid"


def test_subtree_keeps_the_root_its_descendants_and_their_edges(tiny):
    sub = load_wordnet(tiny, root="animal.n.01")
    assert sub.names == ["animal.n.01", "dog.n.02", "lassie.n.01"]
    assert sub.edges.tolist() == [[1, 0], [2, 1]]
    assert sub.roots() == ["animal.n.01"]


def test_clear_errors(tiny, tmp_path):
    with pytest.raises(SemidError, match="wordnet-base"):
        find_wordnet_dir(tmp_path / "nowhere")
    with pytest.raises(SemidError, match="unknown synset"):
        load_wordnet(tiny).index("cat.n.01")


def test_registered():
    assert {"wordnet-nouns", "wordnet-mammals"} <= set(available_datasets())


@pytest.fixture(scope="module")
def wordnet():
    try:
        find_wordnet_dir()
    except SemidError:
        pytest.skip("WordNet 3.0 is not installed (apt-get install wordnet-base)")
    return load_wordnet()


@pytest.mark.slow
def test_installed_wordnet_known_facts(wordnet):
    assert len(wordnet) == 82115 and len(wordnet.edges) == 84427
    assert wordnet.roots() == ["entity.n.01"]
    assert set(wordnet.parents("dog.n.01")) == {"canine.n.02", "domestic_animal.n.01"}
    assert wordnet.parents("einstein.n.01") == ["physicist.n.01"]  # an instance hypernym
    assert "mammal.n.01" in wordnet.ancestors("dog.n.01")
    assert int(wordnet.depths().max()) == 18 and (wordnet.depths() >= 0).all()
    mammals = wordnet.subtree("mammal.n.01")
    assert len(mammals) == 1182 and mammals.roots() == ["mammal.n.01"]
    closure = mammals.closure()
    assert len(closure) == 6542 and len(torch.unique(closure, dim=0)) == len(closure)
