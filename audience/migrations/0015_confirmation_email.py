"""Each signup form's own confirmation email: a subject and a Markdown body with merge
fields, sent in the branded layout. Existing forms get the text every form sent before."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("audience", "0014_forms_ui"),
    ]

    operations = [
        migrations.AddField(
            model_name='signupform',
            name='confirmation_body',
            field=models.TextField(blank=True, default='Hello{% if first_name %} {{ first_name }}{% endif %},\n\nPlease confirm that you want to hear from {{ from_name|default:"us" }}:\n\n<a href="{{ confirm_url }}" style="display:inline-block;padding:10px 18px;background:{{ accent_color }};color:#ffffff;border-radius:6px;text-decoration:none;">Yes, subscribe me</a>\n\nThe link works for {{ confirm_days }} days. If you did not sign up, ignore this email and you will not hear from us again.\n', help_text='Markdown; raw HTML allowed. Must link to {{ confirm_url }}, e.g. [Yes, subscribe me]({{ confirm_url }}). Also: {{ first_name }}, {{ from_name }}, {{ confirm_days }}, {{ form_title }}, {{ accent_color }}. Sent in your branded layout (logo, shop name, accent colour: Sender settings). Left empty: the default text.', verbose_name='confirmation email'),
        ),
        migrations.AddField(
            model_name='signupform',
            name='confirmation_subject',
            field=models.CharField(blank=True, default='Please confirm your subscription{% if form_title %}: {{ form_title }}{% endif %}', help_text='Merge fields as in a campaign, e.g. {{ form_title }}, {{ from_name }}. Left empty: the default subject.', max_length=300, verbose_name='confirmation email subject'),
        ),
    ]
