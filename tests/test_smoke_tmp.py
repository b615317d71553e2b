import pytest
from tests.testapp.models import Author

pytestmark = pytest.mark.django_db(transaction=True)

def test_basic(django_assert_num_queries, redis, counts):
    a = Author.objects.create(name="A", email="a@x.org", slug="a")
    with django_assert_num_queries(1):
        x = Author.objects.get(pk=a.pk)
    assert x == a and x.name == "A"
    import time; time.sleep(0.05)
    print(redis.keys("*"))
    with django_assert_num_queries(0):
        y = Author.objects.get(pk=a.pk)
    assert y.name == "A" and y._state.adding is False and y._state.db == "default"
    a.name = "B"; a.save()
    with django_assert_num_queries(1):
        z = Author.objects.get(pk=a.pk)
    assert z.name == "B"
    print(counts("testapp.author"))
